"""Package stage: champion resolution and refusals (pure, with fakes), then the CLI on a real registry."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from components.common.cli import StageError
from components.package.core import (
    Champion,
    bento_model_labels,
    bento_model_metadata,
    check_model_shapes,
    check_registration,
    find_packaged,
    pin_packages,
    resolve_champion,
)
from tests.package_support import CLASSES, IMAGE_SIZE, MODEL_NAME, register_tiny_model, run_package, write_project

GOOD_TAGS = {"classes": json.dumps(CLASSES), "image_size": "32", "window_center": "40", "window_width": "400"}


def fake_registry(versions: dict[tuple[str, str], SimpleNamespace]):
    """An alias lookup over a dict: (model name, alias) -> version object."""
    return lambda name, alias: versions.get((name, alias))


def champion(version: str = "3") -> Champion:
    return Champion("m", version, "run1", tuple(CLASSES), 32, 40.0, 400.0)


# --- champion resolution -------------------------------------------------------------------------

def test_resolve_champion_reads_the_serving_contract_from_tags():
    found = SimpleNamespace(version="3", run_id="abc", tags=GOOD_TAGS)
    result = resolve_champion(fake_registry({("m", "champion"): found}), "m")
    assert result == Champion("m", "3", "abc", tuple(CLASSES), 32, 40.0, 400.0)
    assert result.model_uri == "models:/m/3" and result.series_pooling == "mean"  # no tag: registered before


def test_the_certified_study_pooling_is_part_of_the_contract_and_reaches_the_bento():
    found = SimpleNamespace(version="3", run_id="abc", tags={**GOOD_TAGS, "series_pooling": "gem"})
    result = resolve_champion(fake_registry({("m", "champion"): found}), "m")
    assert result.series_pooling == "gem" and bento_model_metadata(result)["series_pooling"] == "gem"
    bad = SimpleNamespace(version="3", run_id="abc", tags={**GOOD_TAGS, "series_pooling": "median"})
    with pytest.raises(StageError, match="'series_pooling' is 'median'"):
        resolve_champion(fake_registry({("m", "champion"): bad}), "m")


def test_resolve_champion_refuses_when_no_version_has_the_alias():
    with pytest.raises(StageError, match="alias 'champion'"):
        resolve_champion(fake_registry({}), "m")


def test_resolve_champion_names_missing_and_unreadable_tags():
    lookup = fake_registry({("m", "champion"): SimpleNamespace(version="1", run_id="r", tags={"classes": "[]"})})
    with pytest.raises(StageError, match="image_size, window_center, window_width"):
        resolve_champion(lookup, "m")
    broken = {**GOOD_TAGS, "classes": "Normal,Cyst"}
    lookup = fake_registry({("m", "champion"): SimpleNamespace(version="1", run_id="r", tags=broken)})
    with pytest.raises(StageError, match="unreadable"):
        resolve_champion(lookup, "m")


# --- gate and registry agreement -----------------------------------------------------------------

def test_check_registration_accepts_a_passed_gate_naming_the_champion():
    check_registration({"gate_passed": True, "champion_version": 3}, champion("3"))


@pytest.mark.parametrize("record, message", [
    ({"gate_passed": False, "champion_version": "3"}, "did not pass the evaluation gate"),
    ({"champion_version": "3"}, "no 'gate_passed'"),
    ({"gate_passed": True}, "no 'champion_version'"),
    ({"gate_passed": True, "champion_version": "2"}, "names champion version 2.*points at version 3"),
])
def test_check_registration_refuses(record, message):
    with pytest.raises(StageError, match=message):
        check_registration(record, champion("3"))


def test_check_model_shapes_catches_tags_that_disagree_with_the_model():
    check_model_shapes((None, 32, 32, 1), (None, 4), champion())
    with pytest.raises(StageError, match="expects input"):
        check_model_shapes((None, 180, 180, 1), (None, 4), champion())
    with pytest.raises(StageError, match="outputs 3 scores for 4 classes"):
        check_model_shapes((None, 32, 32, 1), (None, 3), champion())


# --- idempotency and pins ------------------------------------------------------------------------

def test_find_packaged_matches_name_and_registry_version_labels():
    labels = bento_model_labels(champion("3"))
    stored = [("other:a", labels), ("kct:b", bento_model_labels(champion("2"))), ("kct:c", labels)]
    assert find_packaged(stored, "kct", champion("3")) == "kct:c"
    assert find_packaged(stored, "kct", champion("4")) is None
    f32 = bento_model_labels(champion("3"), "openvino", "f32")
    assert find_packaged([("kct:f", f32)], "kct", champion("3"), "openvino", "f32") == "kct:f"
    assert find_packaged([("kct:f", f32)], "kct", champion("3"), "openvino", "int8") is None  # packaged again


def test_pin_packages_uses_constraints_and_leaves_unknown_names_bare():
    constraints = "Pillow==13.0.0\npydicom==3.0.2 ; python_version>'3'\n# numpy==1.0\n"
    assert pin_packages(["pillow", "pydicom", "numpy", "keras>=3"], constraints) == [
        "pillow==13.0.0", "pydicom==3.0.2", "numpy", "keras>=3"]


# --- the CLI against a real MLflow sqlite registry -----------------------------------------------

@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """A project folder with mlruns.db: MODEL_NAME v1 as champion, 'unaliased-model' v1 without alias."""
    root = tmp_path_factory.mktemp("registry")
    register_tiny_model(root)
    register_tiny_model(root, "unaliased-model", champion=False)
    return root


@pytest.fixture(scope="module")
def packaged(registry: Path):
    """The stage run once in the registry folder (params' relative sqlite URI and BentoML home)."""
    write_project(registry, "1")
    return run_package(registry)


def test_package_saves_the_champion_and_builds_a_bento(registry: Path, packaged):
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    record = json.loads((registry / "reports/package/bento.json").read_text())
    assert (record["mlflow_model_name"], record["mlflow_model_version"]) == (MODEL_NAME, "1")
    assert record["classes"] == CLASSES and record["image_size"] == IMAGE_SIZE
    model_name, model_version = record["bento_model_tag"].split(":")
    model_dir = registry / ".bentoml/models" / model_name / model_version
    model_info = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert (model_dir / "model.keras").is_file()
    assert model_info["labels"]["mlflow_version"] == "1" and model_info["metadata"]["classes"] == CLASSES
    bento_dir = registry / ".bentoml/bentos" / record["bento_tag"].replace(":", "/")
    assert (bento_dir / "src/components/common/imaging.py").is_file()
    assert (bento_dir / "src/serving/service.py").is_file()
    bento_info = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert {"tag": record["bento_model_tag"], "alias": "champion"}.items() <= bento_info["models"][0].items()


def test_packaging_the_same_version_again_reuses_the_bento_model(registry: Path, packaged):
    first = json.loads((registry / "reports/package/bento.json").read_text())
    again = run_package(registry)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((registry / "reports/package/bento.json").read_text())
    assert second["bento_model_reused"] is True and second["bento_model_tag"] == first["bento_model_tag"]
    versions = [p for p in (registry / ".bentoml/models/kidney_ct_classifier").iterdir() if p.is_dir()]
    assert [p.name for p in versions] == [first["bento_model_tag"].split(":")[1]]


def test_package_refuses_when_no_version_is_champion(registry: Path, tmp_path: Path):
    write_project(tmp_path, "1", model_name="unaliased-model")
    result = run_package(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{registry / 'mlruns.db'}")
    assert result.returncode == 2
    assert "unaliased-model" in result.stderr and "alias 'champion'" in result.stderr
    assert not (tmp_path / "reports/package/bento.json").exists()


def test_package_refuses_when_the_gate_failed(registry: Path, tmp_path: Path):
    write_project(tmp_path, "1", gate_passed=False)
    result = run_package(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{registry / 'mlruns.db'}")
    assert result.returncode == 2 and "did not pass the evaluation gate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "reports/package/bento.json").exists()


def test_package_refuses_a_missing_registry_without_creating_one(tmp_path: Path):
    write_project(tmp_path, "1")
    result = run_package(tmp_path)
    assert result.returncode == 2 and "no MLflow registry" in result.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_the_build_context_holds_exactly_the_bentofiles_includes_and_refuses_one_that_matches_nothing(tmp_path: Path):
    from components.package.__main__ import BENTOFILE, staged_context

    include = yaml.safe_load(BENTOFILE.read_text())["include"]
    context = staged_context(include, tmp_path / "context")
    staged = sorted(str(path.relative_to(context)) for path in context.rglob("*") if path.is_file())
    assert staged == sorted(include)  # the bentofile names files, not globs: one each, nothing else
    with pytest.raises(StageError, match="serving/missing.py, which matches no file"):
        staged_context(["serving/missing.py"], tmp_path / "other")


def test_a_conversion_that_disagrees_with_the_keras_model_is_refused_with_its_figures(tmp_path, monkeypatch):
    import keras

    from components.common import inference
    from components.common.params import load_params
    from components.package.__main__ import converted_runtime, validation_slices
    from tests.package_support import tiny_keras_model, write_validation_slices

    prepared = write_validation_slices(tmp_path)
    params = load_params(write_project(tmp_path, "3"))
    params = params.model_copy(update={"paths": params.paths.model_copy(update={"prepared": str(prepared)})})
    slices = validation_slices(prepared, champion())
    assert slices is not None and slices[0].shape == (24, IMAGE_SIZE, IMAGE_SIZE)
    right = tiny_keras_model()
    wrong = keras.models.clone_model(right)  # the same graph, fresh weights: a conversion gone wrong
    real_convert = inference.convert
    monkeypatch.setattr(inference, "convert", lambda model, folder: real_convert(wrong, folder))
    with pytest.raises(StageError, match=r"refused: on 24 validation slices of 6 series: max probability difference"):
        converted_runtime(right, champion(), params, slices, tmp_path / "out")
    assert validation_slices(tmp_path / "absent", champion()) is None  # nothing to check on: the Keras model serves


def test_the_int8_form_is_calibrated_on_training_slices_and_checked_like_any_conversion(tmp_path):
    import numpy as np
    import openvino as ov

    from components.common.params import load_params
    from components.package.__main__ import converted_runtime, validation_slices
    from tests.package_support import tiny_keras_model, write_validation_slices

    prepared = write_validation_slices(tmp_path)
    params = load_params(write_project(tmp_path, "3"))
    package = params.package.model_copy(update={"runtime_precision": "int8", "max_probability_diff": 1e-9})
    params = params.model_copy(update={"package": package,
                                       "paths": params.paths.model_copy(update={"prepared": str(prepared)})})
    slices = validation_slices(prepared, champion())
    with pytest.raises(StageError, match=r"X_train.npy is missing: run the preprocess stage, or choose f32"):
        converted_runtime(tiny_keras_model(), champion(), params, slices, tmp_path / "out")
    np.save(prepared / "arrays" / "X_train.npy", np.random.default_rng(2).integers(0, 256, (30, IMAGE_SIZE, IMAGE_SIZE),
                                                                                   dtype=np.uint8))
    with pytest.raises(StageError, match=r"refused: on 24 validation slices of 6 series: max probability difference "
                                         r"[0-9.e-]+ on a slice \(allowed 1e-09\)"):
        converted_runtime(tiny_keras_model(), champion(), params, slices, tmp_path / "out2")
    ops = {op.get_type_name() for op in ov.Core().read_model(str(tmp_path / "out2" / "openvino" / "model.xml")).get_ops()}
    assert "FakeQuantize" in ops  # what was checked (and refused) is the quantised form
