"""MLflow set-up in one place: tracking URI (env wins over params) and the experiment."""

from __future__ import annotations

import os
from pathlib import Path

from components.common.params import MlflowParams


def tracking_uri(params: MlflowParams) -> str:
    """MLFLOW_TRACKING_URI if set, else params; a relative sqlite path is made absolute.

    Relative to the project root DVC names in DVC_ROOT when a stage runs under DVC: a queued
    `dvc exp run` runs in a temp copy of the repo, and its runs belong in the project's store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        root = Path(os.environ.get("DVC_ROOT") or ".")
        uri = prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def default_artifact_location(uri: str) -> str | None:
    """For a sqlite store, keep artifacts in `mlartifacts/` beside the database file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return (Path(uri[len(prefix):]).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides its own artifact store


def configure_mlflow(params: MlflowParams) -> str:
    """Point mlflow at the tracking store and experiment; return the experiment id."""
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.experiment)
    if experiment is None:
        experiment_id = mlflow.create_experiment(params.experiment, artifact_location=default_artifact_location(uri))
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
