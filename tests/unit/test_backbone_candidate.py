"""The ct_resnet152 candidate on tiny fixtures: features stage -> frozen head -> one saved Keras model.

A fake checkpoint holds only the stem and layer1 at real width, so the model reads `layer1` features; the
code path is the one real data takes with layer3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.backbone.core import convert_state_dict
from components.common.gradcam import find_last_conv_layer, gradcam
from components.common.params import CandidateParams, parse_params
from components.features.__main__ import main as features_main
from components.lib.ct_resnet import WEIGHTS_FILE, save_weights
from components.lib.models import build_model, set_backbone_trainable
from tests.tiny import MILD_AUGMENT, tiny_params, write_params
from tests.unit.test_backbone import fake_state

SIDE, N = 32, {"train": 16, "val": 8, "test": 8}
CANDIDATE = {"architecture": "ct_resnet152", "weights": "converted", "backbone_layers": ["layer1"],
             "head_c": [0.1, 1.0], "dropout": 0.0}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """Prepared arrays (two brightness-coded classes), converted fake weights, params with the backbone on."""
    raw = tiny_params(tmp_path)
    raw["backbone"] = {"enabled": True, "image_size": None, "layers": ["layer1"], "batch_size": 4}
    raw["train"]["candidates"] = {"ct": CANDIDATE}
    raw["classes"] = ["Normal", "Cyst"]
    arrays = Path(raw["paths"]["prepared"]) / "arrays"
    arrays.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in N.items():
        y = np.arange(n) % 2
        x = (rng.integers(0, 60, (n, SIDE, SIDE, 1)) + 150 * y[:, None, None, None]).astype("uint8")
        np.save(arrays / f"X_{split}.npy", x), np.save(arrays / f"y_{split}.npy", y)
    rows = [f"{split},{split}-g{i // 2},{split}-{i:02d}" for split, n in N.items() for i in range(n)]
    (arrays.parent / "split.csv").write_text("split,group,key\n" + "\n".join(rows) + "\n")
    (arrays / "stats.json").write_text(json.dumps({"train_pixel_mean": 0.4, "train_pixel_variance": 0.1}))
    save_weights(Path(raw["paths"]["backbone"]) / WEIGHTS_FILE, convert_state_dict(fake_state((3,), 64)))
    return write_params(raw, tmp_path / "params.yaml")


def test_features_then_frozen_head_give_one_model_that_reloads_and_explains(project: Path, tmp_path: Path):
    import keras

    from components.common.params import load_params
    from components.train.__main__ import load_split_arrays, train_frozen_head

    assert features_main(["--params", str(project)]) == 0
    params = load_params(project)
    meta = json.loads((Path(params.paths.features) / "features.json").read_text())
    assert meta["images"] == N and meta["layers"] == ["layer1"] and meta["images_per_second"] > 0
    assert np.load(Path(params.paths.features) / "train.npy").shape == (16, 256)

    data = load_split_arrays(Path(params.paths.prepared) / "arrays")
    from components.lib.features import resolve_backbone

    candidate = resolve_backbone(params, params.train.candidates["ct"])
    result = train_frozen_head(params, "ct", candidate, data)
    assert result.runtime["check_gap"] < 1e-4 and result.history["head_c"] == [0.1, 1.0]
    assert len(result.history["f1"]) == len(result.history["val_f1"]) == 2  # what the training-curve plot reads
    from components.common.plots import save_training_curves

    save_training_curves(result.history, tmp_path / "curves.png", "ct")
    assert (tmp_path / "curves.png").stat().st_size > 0
    model = result.model
    assert not any(model.get_layer(n).trainable for n in ("conv1", "layer1_2_conv3"))
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")  # built-in layers only: no custom objects
    x_test = np.load(Path(params.paths.prepared) / "arrays" / "X_test.npy").astype("float32")
    probabilities = np.asarray(reloaded.predict(x_test, verbose=0))
    assert np.allclose(probabilities, model.predict(x_test, verbose=0), atol=1e-6)
    assert (probabilities.argmax(axis=1) == np.arange(8) % 2).mean() >= 0.75     # brightness codes the class
    assert find_last_conv_layer(reloaded) == "cam_layer1"  # identity conv on layer1's output
    maps = gradcam(reloaded, x_test[:2])
    assert maps.shape == (2, SIDE, SIDE) and np.all((maps >= 0) & (maps <= 1))


def test_leakage_scores_the_frozen_head_on_the_cached_features(project: Path):
    from components.common.params import load_params
    from components.leakage.__main__ import recipe_fit
    from components.lib.folds import IndexSplit
    from components.lib.prepared import load_all_images

    assert features_main(["--params", str(project)]) == 0
    params = load_params(project)
    x, y, groups = load_all_images(Path(params.paths.prepared))
    fit = recipe_fit(params, "ct", x, y, groups)
    split = IndexSplit(np.arange(0, 16), np.arange(16, 24), np.arange(24, 32))
    variants = fit(split)
    assert list(variants) == ["plain"] and variants["plain"].shape == (8, 2)


def test_train_refuses_plainly_when_features_are_off(project: Path):
    import yaml

    from components.train.__main__ import main as train_main

    raw = yaml.safe_load(project.read_text())
    raw["backbone"]["enabled"] = False
    project.write_text(yaml.safe_dump(raw))
    assert features_main(["--params", str(project)]) == 0
    assert train_main(["--params", str(project), "--candidate", "ct"]) == 2


def test_trainable_modes_freeze_all_some_or_no_backbone_blocks():
    candidate = CandidateParams(**{**CANDIDATE, "weights": "none", "backbone_layers": ["layer2"]})
    model = build_model("ct", candidate, SIDE, 4, [], 0.0, 1.0)
    trainable = lambda: {layer.name for layer in model.layers if layer.trainable_weights}  # noqa: E731
    assert trainable() == {"probabilities"}
    set_backbone_trainable(model, "last_blocks_2")
    assert {n.rsplit("_", 1)[0] for n in trainable() - {"probabilities"}} == {"layer2_6", "layer2_7"}
    set_backbone_trainable(model, "all")
    assert {"conv1", "bn1", "layer1_0_downsample_0", "layer2_7_bn3"} <= trainable()
    assert not {"orient_flip_cols", "orient_flip_rows"} & trainable()


def test_params_example_of_the_candidate_parses():
    raw = tiny_params(Path("/tmp"))
    raw["train"]["candidates"]["ct"] = CANDIDATE
    assert parse_params(raw).train.candidates["ct"].trainable == "frozen"


def test_fine_tuning_runs_through_the_usual_training_loop(project: Path):
    from components.common.params import AugmentParams, load_params
    from components.lib.features import resolve_backbone
    from components.lib.training import train_candidate
    from components.train.__main__ import load_split_arrays

    params = load_params(project)
    candidate = resolve_backbone(params, params.train.candidates["ct"]).model_copy(
        update={"trainable": "last_blocks_1", "epochs": 1, "batch_size": 8, "learning_rate": 1e-3})
    data = load_split_arrays(Path(params.paths.prepared) / "arrays")
    before = np.load(Path(params.paths.backbone) / WEIGHTS_FILE)["layer1_2_conv3.0"]
    result = train_candidate("ct", candidate, AugmentParams(**MILD_AUGMENT), data, 2, seed=0, callbacks=[], verbose=0)
    model = result.model
    assert len(result.history["loss"]) == 1
    assert np.allclose(model.get_layer("layer1_0_conv1").get_weights()[0],        # frozen block: converted weights
                       np.load(Path(params.paths.backbone) / WEIGHTS_FILE)["layer1_0_conv1.0"])
    assert not np.allclose(model.get_layer("layer1_2_conv3").get_weights()[0], before)  # the last block trained


def test_several_layers_each_pooled_its_own_ways_make_one_model_that_matches_the_cache_and_explains(project: Path,
                                                                                                   tmp_path: Path):
    import keras
    import yaml

    from components.common.params import load_params
    from components.lib.features import resolve_backbone
    from components.train.__main__ import load_split_arrays, train_frozen_head

    raw = yaml.safe_load(project.read_text())
    raw["backbone"].update(layers=["layer1", "layer2"], pooling=["mean", "max"])
    raw["train"]["candidates"]["ct"].update(backbone_layers=["layer1", "layer2"],
                                            backbone_pooling={"layer1": ["mean", "max"]})
    project.write_text(yaml.safe_dump(raw))
    save_weights(Path(raw["paths"]["backbone"]) / WEIGHTS_FILE, convert_state_dict(fake_state((3, 8), 64)))
    assert features_main(["--params", str(project)]) == 0
    params = load_params(project)
    meta = json.loads((Path(params.paths.features) / "features.json").read_text())
    assert meta["blocks"] == [["layer1", "mean"], ["layer1", "max"], ["layer2", "mean"], ["layer2", "max"]]
    assert np.load(Path(params.paths.features) / "train.npy").shape == (16, 256 * 2 + 512 * 2)

    candidate = resolve_backbone(params, params.train.candidates["ct"])
    assert candidate.feature_blocks() == [("layer1", "mean"), ("layer1", "max"), ("layer2", "mean")]
    result = train_frozen_head(params, "ct", candidate, load_split_arrays(Path(params.paths.prepared) / "arrays"))
    assert result.runtime["check_gap"] < 1e-4  # the model's three blocks are the cache's columns 0-1023 + 1536-2047
    assert result.model.get_layer("probabilities").kernel.shape == (256 * 2 + 512, 2)
    result.model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    assert find_last_conv_layer(reloaded) == "cam_layer2"  # the deepest map; layer1's features are held
    x_test = np.load(Path(params.paths.prepared) / "arrays" / "X_test.npy").astype("float32")
    maps = gradcam(reloaded, x_test[:2])
    assert maps.shape == (2, SIDE, SIDE) and np.all((maps >= 0) & (maps <= 1)) and maps.max() > 0


def test_a_backbone_cut_inside_its_deepest_layer_is_cached_trained_and_served_alike(project: Path, tmp_path: Path):
    """deepest_layer_blocks: the features stage and the candidate read layer1 after 2 of its 3 blocks; the model
    matches the cache, holds no third block, and features cut otherwise are refused with what to set."""
    import yaml

    from components.common.cli import StageError
    from components.common.params import load_params
    from components.lib.ct_resnet import assign_weights, feature_extractor, load_weights
    from components.lib.features import resolve_backbone
    from components.train.__main__ import load_split_arrays, train_frozen_head

    raw = yaml.safe_load(project.read_text())
    raw["backbone"]["deepest_layer_blocks"] = 2
    raw["train"]["candidates"]["ct"]["deepest_layer_blocks"] = 2
    project.write_text(yaml.safe_dump(raw))
    assert features_main(["--params", str(project)]) == 0
    params = load_params(project)
    cached = np.load(Path(params.paths.features) / "train.npy")
    x_train = np.load(Path(params.paths.prepared) / "arrays" / "X_train.npy").astype("float32")
    whole = feature_extractor(SIDE, ["layer1"])
    assign_weights(whole, load_weights(Path(params.paths.backbone) / WEIGHTS_FILE))
    assert not np.allclose(cached, whole.predict(x_train, verbose=0), atol=1e-3)  # not the whole layer's features

    candidate = resolve_backbone(params, params.train.candidates["ct"])
    result = train_frozen_head(params, "ct", candidate, load_split_arrays(Path(params.paths.prepared) / "arrays"))
    assert result.runtime["check_gap"] < 1e-4
    names = {layer.name for layer in result.model.layers}
    assert "layer1_1_out" in names and not any(n.startswith("layer1_2") for n in names)

    with pytest.raises(StageError, match="deepest_layer_blocks alike"):
        train_frozen_head(params, "ct", candidate.model_copy(update={"deepest_layer_blocks": None}),
                          load_split_arrays(Path(params.paths.prepared) / "arrays"))


def test_a_cut_deeper_than_the_layer_is_refused():
    from components.common.params import ParamsError

    with pytest.raises(ValueError, match="layer1 has 3 blocks, not 4"):
        CandidateParams(**{**CANDIDATE, "deepest_layer_blocks": 4})
    raw = tiny_params(Path("/tmp"))
    raw["backbone"] = {"enabled": True, "layers": ["layer2", "layer3"], "deepest_layer_blocks": 37}
    with pytest.raises(ParamsError, match="layer3 has 36 blocks, not 37"):
        parse_params(raw)


def test_backbone_pooling_names_only_layers_the_candidate_reads():
    with pytest.raises(ValueError, match="not in backbone_layers: layer2"):
        CandidateParams(**{**CANDIDATE, "backbone_pooling": {"layer2": ["max"]}})
    with pytest.raises(ValueError, match="distinct poolings"):
        CandidateParams(**{**CANDIDATE, "backbone_pooling": {"layer1": ["max", "max"]}})


def test_the_features_stage_runs_the_backbone_through_its_checked_openvino_form(project: Path, monkeypatch):
    import yaml

    from components.common import runtime
    from components.common.params import load_params
    from components.features.core import RuntimeMismatch, backbone_runtime
    from components.lib.ct_resnet import feature_extractor

    assert features_main(["--params", str(project)]) == 0
    params = load_params(project)
    folder = Path(params.paths.features)
    meta = json.loads((folder / "features.json").read_text())
    assert meta["runtime"] == "openvino" and meta["runtime_check"]["max_relative_diff"] < 1e-3
    converted = np.load(folder / "train.npy")
    raw = yaml.safe_load(project.read_text())
    raw["backbone"]["runtime"] = "tensorflow"
    project.write_text(yaml.safe_dump(raw))
    assert features_main(["--params", str(project)]) == 0
    assert json.loads((folder / "features.json").read_text())["runtime_check"] is None
    assert np.allclose(np.load(folder / "train.npy"), converted, rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(runtime, "compiled_function", lambda model: lambda batch: np.zeros((len(batch), 256)))
    sample = np.load(Path(params.paths.prepared) / "arrays" / "X_train.npy")[:4].astype("float32")
    with pytest.raises(RuntimeMismatch, match=r"OpenVINO form differs from Keras by 1 \(relative\) on 4 training slices"):
        backbone_runtime(feature_extractor(SIDE, [("layer1", "mean")], SIDE), "openvino", sample)
