"""CLI: python -m components.train --candidate NAME — fit one candidate, log it to MLflow."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.tracking import configure_mlflow
from components.train.core import SplitArrays, train_candidate


def load_split_arrays(arrays: Path) -> SplitArrays:
    """Memory-map the prepared arrays and read the training pixel statistics."""
    if not (arrays / "X_train.npy").is_file():
        raise StageError(f"{arrays} has no X_train.npy: run the preprocess stage first")
    stats = json.loads((arrays / "stats.json").read_text())
    load = lambda name: np.load(arrays / f"{name}.npy", mmap_mode="r")  # noqa: E731
    return SplitArrays(load("X_train"), load("y_train"), load("X_val"), load("y_val"),
                       stats["train_pixel_mean"], stats["train_pixel_variance"])


def data_version(params: Params) -> str:
    """Digest of the ingested manifest: the data version every run is tied to."""
    manifest = Path(params.paths.ingested) / "manifest.csv"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "unknown"


def epoch_logger():
    """A Keras callback that logs every epoch's metrics to the active MLflow run."""
    import keras
    import mlflow

    class MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            mlflow.log_metrics({k: float(v) for k, v in (logs or {}).items()}, step=epoch + 1)

    return MlflowEpochLogger()


def model_signature(model, data: SplitArrays):
    """MLflow signature from one real input and the model's output on it."""
    from mlflow.models import infer_signature

    sample = np.asarray(data.x_train[:1], dtype="float32")
    return infer_signature(sample, np.asarray(model.predict(sample, verbose=0)))


def run(params: Params, args: argparse.Namespace) -> None:
    import mlflow

    name = args.candidate
    if name not in params.train.candidates:
        raise StageError(f"unknown candidate {name!r}; params lists {sorted(params.train.candidates)}")
    candidate = params.train.candidates[name]
    data = load_split_arrays(Path(params.paths.prepared) / "arrays")
    out = Path(params.paths.models) / name
    out.mkdir(parents=True, exist_ok=True)
    configure_mlflow(params.mlflow)
    with mlflow.start_run(run_name=name) as active:
        mlflow.set_tags({"candidate": name, "stage": "train", "data_version": data_version(params)})
        mlflow.log_params({"candidate": name, **candidate.model_dump(), "seed": params.train.seed,
                           "image_size": data.x_train.shape[1], "train_images": len(data.y_train),
                           "val_images": len(data.y_val), **{f"augment_{k}": v for k, v in params.augment.model_dump().items()}})
        log.info("training %s on %d images (%d validation)", name, len(data.y_train), len(data.y_val))
        result = train_candidate(name, candidate, params.augment, data, len(params.classes), params.train.seed,
                                 callbacks=[epoch_logger()])
        result.model.save(out / "model.keras")
        mlflow.log_metrics({"training_seconds": result.seconds, "best_epoch": result.best_epoch})
        mlflow.log_dict(result.history, "history.json")
        info = mlflow.keras.log_model(result.model, name="model", signature=model_signature(result.model, data))
    write_json(out / "history.json", result.history)
    write_json(out / "run.json", {"run_id": active.info.run_id, "model_uri": info.model_uri, "candidate": name,
                                  "training_seconds": round(result.seconds, 2), "best_epoch": result.best_epoch,
                                  "parameters": int(result.model.count_params())})
    log.info("%s trained in %.1f s (best epoch %d); MLflow run %s", name, result.seconds, result.best_epoch,
             active.info.run_id)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Train one candidate model from params.train.candidates and log it to MLflow.")
    parser.add_argument("--candidate", required=True, help="a key of train.candidates in the params file")
    return run_stage("train", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
