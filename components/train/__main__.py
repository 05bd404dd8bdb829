"""CLI: python -m components.train --candidate NAME — fit one candidate, log it to MLflow."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.tracking import configure_mlflow
from components.lib.features import FeaturesError, load_copies, load_features, resolve_backbone
from components.lib.feeders import loss_weights
from components.lib.heads import fit_frozen_head, head_probabilities, is_frozen_backbone
from components.lib.models import SetupError, build_model, resolve_weights
from components.lib.parent_runs import open_parent_run
from components.lib.prepared import split_counts
from components.lib.training import (
    SplitArrays,
    TrainResult,
    clear_checkpoint,
    fingerprint,
    read_checkpoint,
    train_candidate,
)


def fitting_splits(params: Params) -> tuple[str, ...]:
    """The splits a candidate learns from: train; under evaluate.protocol cv_refit also test.

    cv_refit deploys the recipe refitted on every labelled series (its figures come from the grouped CV of the
    same recipe); the validation split still picks the epoch or the head's C, as in every CV fold.
    """
    return ("train", "test") if params.evaluate.protocol == "cv_refit" else ("train",)


def load_split_arrays(arrays: Path, fit: tuple[str, ...] = ("train",)) -> SplitArrays:
    """Memory-map the prepared arrays (the `fit` splits joined as training data) and read the pixel statistics."""
    if not (arrays / "X_train.npy").is_file():
        raise StageError(f"{arrays} has no X_train.npy: run the preprocess stage first")
    stats = json.loads((arrays / "stats.json").read_text())
    load = lambda name: np.load(arrays / f"{name}.npy", mmap_mode="r")  # noqa: E731
    joined = lambda kind: load(f"{kind}_{fit[0]}") if len(fit) == 1 else np.concatenate(  # noqa: E731
        [load(f"{kind}_{split}") for split in fit])
    return SplitArrays(joined("X"), joined("y"), load("X_val"), load("y_val"),
                       stats["train_pixel_mean"], stats["train_pixel_variance"])


def with_loss_weights(data: SplitArrays, params: Params, name: str) -> SplitArrays:
    """Attach the candidate's loss weights; scan-series balance reads the training groups from split.csv."""
    mode = params.train.candidates[name].loss_weighting
    groups = None
    if mode == "class_and_group":
        table = pd.read_csv(Path(params.paths.prepared) / "split.csv", dtype=str)
        groups = np.concatenate([table.loc[table["split"] == split, "group"].to_numpy()
                                 for split in fitting_splits(params)])
        if len(groups) != len(data.y_train):
            raise StageError("split.csv and X_train.npy disagree on the training images: re-run preprocess")
    return dataclasses.replace(data, w_train=loss_weights(np.asarray(data.y_train), len(params.classes), mode, groups))


def data_version(params: Params) -> str:
    """Digest of the ingested manifest: the data version every run is tied to."""
    manifest = Path(params.paths.ingested) / "manifest.csv"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "unknown"


def epoch_logger():
    """mlflow.keras.MlflowCallback: every epoch's metrics, the optimizer's config as params, the model summary.

    Steps are 1-based epoch numbers (as in history.json and best_epoch); validation metrics arrive per epoch
    as val_*, so the callback's step-less `validation_*` copies from on_test_end are left out.
    """
    from mlflow.keras import MlflowCallback

    class EpochLogger(MlflowCallback):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch + 1, logs)

        def on_test_end(self, logs=None):
            pass

    return EpochLogger()


def model_signature(model, data: SplitArrays):
    """MLflow signature from one real input and the model's output on it."""
    from mlflow.models import infer_signature

    sample = np.asarray(data.x_train[:1], dtype="float32")
    return infer_signature(sample, np.asarray(model.predict(sample, verbose=0)))


MODEL_PACKAGES = ("keras", "numpy", "tensorflow")  # what loading the logged Keras model needs


def model_requirements() -> list[str]:
    """The logged model's pip requirements, pinned to the versions that trained it.

    Given explicitly, MLflow skips its inference, which reloads the model in a subprocess (~8 s a model).
    """
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in MODEL_PACKAGES]


def start_candidate_run(name: str, previous: dict | None, experiment_id: str, data_version_id: str):
    """Resume the MLflow run of a killed training, or open a new one under the pipeline's parent run."""
    import mlflow
    from mlflow import MlflowClient

    if previous and previous.get("run_id"):
        return mlflow.start_run(run_id=previous["run_id"])
    parent = open_parent_run(MlflowClient(), experiment_id, data_version_id)
    return mlflow.start_run(run_name=name, parent_run_id=parent)


def train_frozen_head(params: Params, name: str, candidate, data: SplitArrays) -> TrainResult:
    """Fit the logistic-regression head on cached features; return the whole model (front, backbone, head).

    A few validation images go through the whole model as a check that the cache matches it.
    """
    try:
        features = load_features(params, candidate, data.x_train.shape[1],
                                 split_counts(Path(params.paths.prepared) / "arrays"))
    except FeaturesError as exc:
        raise StageError(str(exc)) from None
    fitted = np.concatenate([np.asarray(features[split]) for split in fitting_splits(params)])
    x_fit, y_fit = fitted, np.asarray(data.y_train)
    augmented = load_copies(params, candidate, "aug")
    if augmented is not None:  # each fitted slice's random-scanner copy beside it (backbone.copies: aug)
        x_fit = np.concatenate([fitted, *(np.asarray(augmented[split]) for split in fitting_splits(params))])
        y_fit = np.concatenate([y_fit, y_fit])
    head = fit_frozen_head(candidate, x_fit, y_fit, np.asarray(features["val"]),
                           np.asarray(data.y_val), len(params.classes), params.train.seed)
    model = build_model(name, candidate, data.x_train.shape[1], len(params.classes), [], data.pixel_mean,
                        data.pixel_variance)
    model.get_layer("probabilities").set_weights([head.kernel, head.bias])
    check = slice(0, min(8, len(data.y_val) or len(data.y_train)))
    source, cached = (data.x_val, features["val"]) if len(data.y_val) else (data.x_train, fitted)
    gap = float(np.abs(np.asarray(model.predict(np.asarray(source[check], dtype="float32"), verbose=0))
                       - head_probabilities(head, np.asarray(cached[check]))).max())
    if gap > 1e-3:
        raise StageError(f"the cached features do not match the model (probabilities differ by {gap:.3g}): "
                         "re-run the backbone and features stages")
    tried = list(head.train_macro_f1)  # one "epoch" per C tried, so the usual curves plot train vs validation F1
    history = {"head_c": tried, "f1": [head.train_macro_f1[c] for c in tried],
               **({"val_f1": [head.val_macro_f1[c] for c in tried]} if head.val_macro_f1 else {})}
    return TrainResult(model=model, history=history, seconds=head.seconds, best_epoch=1 + tried.index(head.c),
                       runtime={"head": "logistic_regression", "head_c": head.c, "check_gap": gap})


def run(params: Params, args: argparse.Namespace) -> None:
    import mlflow

    name = args.candidate
    if name not in params.train.candidates:
        raise StageError(f"unknown candidate {name!r}; params lists {sorted(params.train.candidates)}")
    candidate = params.train.candidates[name]
    try:
        if candidate.architecture == "ct_resnet152":
            candidate = resolve_backbone(params, candidate)
        else:
            resolve_weights(candidate.weights)
    except SetupError as exc:
        raise StageError(str(exc)) from None
    fit_splits = fitting_splits(params)
    data = with_loss_weights(load_split_arrays(Path(params.paths.prepared) / "arrays", fit_splits), params, name)
    out = Path(params.paths.models) / name
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = Path(params.paths.checkpoints) / name
    n_classes = len(params.classes)
    previous = read_checkpoint(checkpoints, fingerprint(candidate, params.augment, params.train.seed, data, n_classes))
    experiment_id = configure_mlflow(params.mlflow)
    version = data_version(params)
    with start_candidate_run(name, previous, experiment_id, version) as active:
        if previous:
            log.info("resuming %s after epoch %d (MLflow run %s)", name, previous["epochs_done"], active.info.run_id)
        else:
            mlflow.set_tags({"candidate": name, "stage": "train", "data_version": version})
            mlflow.log_params({"candidate": name, **candidate.model_dump(), "seed": params.train.seed,
                               "image_size": data.x_train.shape[1], "train_images": len(data.y_train),
                               "val_images": len(data.y_val), "protocol": params.evaluate.protocol,
                               "fitted_on": "+".join(fit_splits), **params.train.runtime.model_dump(),
                               **{f"augment_{k}": v for k, v in params.augment.model_dump().items()}})
        log.info("training %s on %d images of the %s split(s) (%d validation)", name, len(data.y_train),
                 "+".join(fit_splits), len(data.y_val))
        try:
            if is_frozen_backbone(candidate):
                result = train_frozen_head(params, name, candidate, data)
            else:
                result = train_candidate(name, candidate, params.augment, data, n_classes, params.train.seed,
                                         callbacks=[epoch_logger()], checkpoint_dir=checkpoints,
                                         runtime=params.train.runtime, extra_state={"run_id": active.info.run_id})
        except SetupError as exc:
            raise StageError(str(exc)) from None
        result.model.save(out / "model.keras")
        mlflow.log_metrics({"training_seconds": result.seconds, "best_epoch": result.best_epoch,
                            "resumed_from_epoch": result.resumed_from_epoch})
        mlflow.set_tags({f"runtime_{k}": str(v) for k, v in result.runtime.items()})
        mlflow.log_dict(result.history, "history.json")
        info = mlflow.keras.log_model(result.model, name="model", signature=model_signature(result.model, data),
                                      pip_requirements=model_requirements())
    write_json(out / "history.json", result.history)
    write_json(out / "run.json", {"run_id": active.info.run_id, "model_uri": info.model_uri, "candidate": name,
                                  "architecture": candidate.architecture, "training_seconds": round(result.seconds, 2),
                                  "best_epoch": result.best_epoch, "resumed_from_epoch": result.resumed_from_epoch,
                                  "protocol": params.evaluate.protocol, "fitted_on": list(fit_splits),
                                  "parameters": int(result.model.count_params()), "runtime": result.runtime})
    clear_checkpoint(checkpoints)
    log.info("%s trained in %.1f s (best epoch %d); MLflow run %s", name, result.seconds, result.best_epoch,
             active.info.run_id)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Train one candidate model from params.train.candidates and log it to MLflow.")
    parser.add_argument("--candidate", required=True, help="a key of train.candidates in the params file")
    return run_stage("train", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
