"""CLI edge of the package stage: `python -m components.package`.

Resolves the registry's champion, copies its Keras model into the BentoML model store (once per
registry version), builds a Bento from serving/bentofile.yaml pinned to that model, writes bento.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.inference import RUNTIME_DIR
from components.common.params import Params
from components.common.registry import connect_mlflow, existing_registry_uri, load_registered_keras, mlflow_alias_lookup
from components.package.core import (
    CHAMPION_ALIAS,
    MODEL_FILE,
    Champion,
    bento_model_labels,
    bento_model_metadata,
    bento_record,
    check_model_shapes,
    check_registration,
    find_packaged,
    pin_packages,
    resolve_champion,
    study_probabilities,
)

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the code (build context), not the data (cwd)
BENTOFILE = SOURCE_ROOT / "serving" / "bentofile.yaml"
CONSTRAINTS = SOURCE_ROOT / "requirements" / "constraints.txt"


def configure_bentoml_env(params: Params) -> str:
    """Point BentoML at its store; must run before `bentoml` is first imported in this process."""
    home = os.environ.get("BENTOML_HOME") or str(Path(params.package.bentoml_home).resolve())
    os.environ["BENTOML_HOME"] = home
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage telemetry from a pipeline
    return home


def ensure_bento_model(champion: Champion, params: Params) -> tuple[str, bool, str, dict | None]:
    """Tag of the BentoML model for this registry version, which afterwards is `<name>:latest`; whether it was
    reused; the runtime it scores with; the conversion check of its OpenVINO form (None: reused, or tensorflow).

    serving/bentofile.yaml declares `<name>:latest`, so a plain `bentoml build` pins the champion:
    a version packaged before is reused while it is the newest, and saved again (a copy, now the
    newest) when the champion moved back to it (a rollback or a re-promotion).
    """
    import bentoml

    name, runtime, precision = params.package.bento_name, params.package.runtime, params.package.runtime_precision
    slices = validation_slices(Path(params.paths.prepared), champion) if runtime == "openvino" else None
    if runtime == "openvino" and slices is None:
        log.warning("no validation slices of the champion's input (%d px) in %s to check a conversion on: the Keras "
                    "model is packaged (run preprocess with its contract to serve the converted form)",
                    champion.image_size, params.paths.prepared)
        runtime = "tensorflow"  # an unchecked conversion is never served
    stored = [(str(m.tag), m.info.labels) for m in bentoml.models.list()]
    existing = find_packaged(stored, name, champion, runtime, precision)
    if existing and str(bentoml.models.get(f"{name}:latest").tag) == existing:
        log.info("reusing BentoML model %s (already packaged from %s)", existing, champion.model_uri)
        return existing, True, runtime, None
    if existing:
        return _resave_as_latest(bentoml.models.get(existing), name, champion, runtime, precision), False, runtime, None
    keras_model = load_registered_keras(champion.model_uri)
    check_model_shapes(keras_model.input_shape, keras_model.output_shape, champion)
    with tempfile.TemporaryDirectory(prefix="kidney-ct-runtime-") as tmp:
        check = converted_runtime(keras_model, champion, params, slices, Path(tmp)) if slices else None
        with bentoml.models.create(name, labels=bento_model_labels(champion, runtime, precision),
                                   metadata=bento_model_metadata(champion, runtime, precision)) as bento_model:
            keras_model.save(bento_model.path_of(MODEL_FILE))
            if check is not None:
                shutil.copytree(Path(tmp) / RUNTIME_DIR, bento_model.path_of(RUNTIME_DIR))
    log.info("saved %s into the BentoML model store as %s", champion.model_uri, bento_model.tag)
    return str(bento_model.tag), False, runtime, check


def validation_slices(prepared: Path, champion: Champion) -> tuple[np.ndarray, list[str]] | None:
    """The prepared validation slices and their series, when they are the champion's input; else None."""
    from components.lib.prepared import load_rows

    file = prepared / "arrays" / "X_val.npy"
    if not file.is_file() or not (prepared / "split.csv").is_file():
        return None
    pixels = _grey(np.load(file))
    rows = load_rows(prepared)
    series = rows.loc[rows["split"] == "val", "study"].tolist()
    if pixels.shape[1:] != (champion.image_size, champion.image_size) or len(series) != len(pixels) or not len(series):
        return None
    return pixels, series


def calibration_slices(prepared: Path) -> np.ndarray:
    """The training slices (memory-mapped): what int8 quantisation calibrates its activation ranges on (`quantize`
    reads 300 of them, evenly spaced)."""
    file = prepared / "arrays" / "X_train.npy"
    if not file.is_file():
        raise StageError(f"package.runtime_precision int8 calibrates on the training slices, and {file} is missing: "
                         "run the preprocess stage, or choose f32")
    return _grey(np.load(file, mmap_mode="r"))


def _grey(pixels: np.ndarray) -> np.ndarray:
    """Prepared slices as (N, size, size): the arrays preprocess writes carry a channel axis of 1."""
    return pixels[..., 0] if pixels.ndim == 4 and pixels.shape[-1] == 1 else pixels


def converted_runtime(keras_model, champion: Champion, params: Params, slices: tuple[np.ndarray, list[str]],
                      folder: Path) -> dict:
    """Convert the champion to OpenVINO IR in folder/openvino, check it against the Keras model on the validation
    slices and series, refuse it (StageError, with the figures) outside the tolerance, log it to the version's run
    for predict and the monitor; the check's figures."""
    from mlflow import MlflowClient

    from components.common.inference import (
        RUN_ARTIFACT,
        SETTINGS_FILE,
        KerasScorer,
        OpenVinoScorer,
        check_conversion,
        convert,
        quantize,
        score,
    )
    from components.common.pooling import fixed_pooling
    from components.common.study_model import StudyModel

    settings, (pixels, series) = params.package, slices
    started = time.monotonic()
    ir_file = convert(keras_model, folder / RUNTIME_DIR)
    if settings.runtime_precision == "int8":
        ir_file = quantize(ir_file, calibration_slices(Path(params.paths.prepared)))
    converted_s = time.monotonic() - started
    keras_probabilities, _ = score(KerasScorer(keras_model), pixels)
    converted = OpenVinoScorer(ir_file, settings.runtime_precision)
    converted_probabilities, _ = score(converted, pixels)
    check = check_conversion(keras_probabilities, converted_probabilities, series,
                             study_probabilities(champion.study or StudyModel(fixed_pooling(champion.series_pooling))),
                             settings.max_probability_diff, settings.min_slice_agreement,
                             settings.max_study_probability_diff)
    record = {"runtime": "openvino", "precision": settings.runtime_precision, "passed": check.passed,
              "convert_seconds": round(converted_s, 1), **vars(check)}
    if not check.passed:
        raise StageError(f"the OpenVINO form of {champion.model_uri} is refused: {check.summary()}; "
                         "package.runtime: tensorflow serves the Keras model instead")
    (folder / RUNTIME_DIR / SETTINGS_FILE).write_text(json.dumps(record, indent=2))
    MlflowClient().log_artifacts(champion.run_id, str(folder / RUNTIME_DIR), RUN_ARTIFACT)
    log.info("converted %s to OpenVINO IR (%s) in %.1f s: %s", champion.model_uri, settings.runtime_precision,
             converted_s, check.summary())
    return record


def _resave_as_latest(stored, name: str, champion: Champion, runtime: str, precision: str) -> str:
    """A copy of an older BentoML model of the champion, so that `<name>:latest` is the champion again."""
    import bentoml

    with bentoml.models.create(name, labels=bento_model_labels(champion, runtime, precision),
                               metadata=bento_model_metadata(champion, runtime, precision)) as bento_model:
        shutil.copy2(stored.path_of(MODEL_FILE), bento_model.path_of(MODEL_FILE))
        if Path(stored.path_of(RUNTIME_DIR)).is_dir():
            shutil.copytree(stored.path_of(RUNTIME_DIR), bento_model.path_of(RUNTIME_DIR))
    log.info("champion %s was packaged before as %s: saved again as %s, now %s:latest", champion.model_uri,
             stored.tag, bento_model.tag, name)
    return str(bento_model.tag)


def staged_context(include: list[str], folder: Path) -> Path:
    """Copy the bentofile's `include` files (paths or globs under SOURCE_ROOT) into `folder`, the build context.

    BentoML walks its whole build context and only then filters by `include`: from the project root that is
    every file of .venv, data and the MLflow store (~8 s); from here, a dozen files. The Bento is the same.
    """
    for pattern in include:
        matches = [path for path in SOURCE_ROOT.glob(pattern) if path.is_file()]
        if not matches:
            raise StageError(f"{BENTOFILE} includes {pattern}, which matches no file under {SOURCE_ROOT}")
        for source in matches:
            target = folder / source.relative_to(SOURCE_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return folder


def build_bento(name: str, model_tag: str, champion: Champion, runtime: str, precision: str = "f32") -> str:
    """Build the Bento from serving/bentofile.yaml, pinning the model as alias `champion`."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    config = yaml.safe_load(BENTOFILE.read_text()) or {}
    python = dict(config.get("python") or {})
    constraints = CONSTRAINTS.read_text() if CONSTRAINTS.is_file() else ""
    python["packages"] = pin_packages(python.get("packages") or [], constraints)
    labels = {**(config.get("labels") or {}), **bento_model_labels(champion, runtime, precision),
              "bento_model": model_tag}
    options = {**config, "python": python, "labels": labels, "name": name,
               "models": [{"tag": model_tag, "alias": CHAMPION_ALIAS}]}
    try:
        with tempfile.TemporaryDirectory(prefix="bento-context-") as context:
            bento = bentoml.build(**options, build_ctx=str(staged_context(config.get("include") or [], Path(context))))
    except (BentoMLException, ImportError) as exc:
        raise StageError(f"building the Bento from {BENTOFILE} failed: {exc}") from None
    log.info("built Bento %s serving %s", bento.tag, model_tag)
    return str(bento.tag)


def package(params: Params, args: argparse.Namespace) -> None:
    """Stage body: champion -> BentoML model -> Bento -> bento.json."""
    configure_bentoml_env(params)
    uri = existing_registry_uri(params)
    connect_mlflow(uri)
    champion = resolve_champion(mlflow_alias_lookup(uri), params.register.model_name)
    check_registration(read_json(Path(params.paths.registration) / "registration.json"), champion)
    log.info("champion is %s", champion.model_uri)
    model_tag, reused, runtime, check = ensure_bento_model(champion, params)
    bento_tag = build_bento(params.package.bento_name, model_tag, champion, runtime, params.package.runtime_precision)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    out = Path(params.paths.package) / "bento.json"
    write_json(out, {**bento_record(champion, bento_tag, model_tag, reused, created),
                     "runtime": runtime, "runtime_check": check})
    log.info("wrote %s", out)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Package the registry's champion model as a BentoML Bento.")
    return run_stage("package", package, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
