"""The MLflow model registry as the stages reach it: its URI, an alias lookup, a registered Keras model."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.common.cli import StageError
from components.common.params import Params
from components.common.tracking import tracking_uri


def existing_registry_uri(params: Params) -> str:
    """The tracking/registry URI (env wins over params); a missing sqlite file is refused, not created."""
    uri = tracking_uri(params.mlflow)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise StageError(f"no MLflow registry at {uri}: run the pipeline (train and register stages) first")
    return uri


def connect_mlflow(uri: str) -> None:
    """Point this process's MLflow tracking and registry at `uri` (models:/ URIs resolve there)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def mlflow_alias_lookup(uri: str) -> Callable[[str, str], Any]:
    """An alias lookup on the real registry: the model version, or None when the model or alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def lookup(model_name: str, alias: str):
        try:
            aliases = client.get_registered_model(model_name).aliases
            return client.get_model_version(model_name, aliases[alias]) if alias in aliases else None
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None  # no registered model of that name
            raise StageError(f"cannot read the MLflow registry at {uri}: {exc.message}") from None

    return lookup


def load_registered_keras(model_uri: str):
    """Download an MLflow model (from the connected registry, e.g. models:/name/3) and load it in Keras."""
    import mlflow.keras

    with tempfile.TemporaryDirectory(prefix="kidney-ct-model-") as tmp:
        try:
            return mlflow.keras.load_model(model_uri, dst_path=tmp)
        except Exception as exc:  # mlflow/keras raise many types for a missing or broken artifact
            raise StageError(f"cannot load {model_uri} as a Keras model: {exc}") from None


REFERENCE_ARTIFACT = "registration/reference.csv"  # a version's data record, logged by the register stage
HELDOUT_ARTIFACT = "registration/heldout_predictions.csv"  # its predictions on slices it was not fitted on
MONITOR_REFERENCE_ARTIFACT = "monitor/reference.csv.gz"  # the monitor's described reference, computed once


def version_table(run_id: str, artifact: str = REFERENCE_ARTIFACT, dtype=str):
    """A CSV artifact of a registered version's run as a DataFrame, or None when absent."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="kidney-ct-reference-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        except Exception:  # mlflow raises several types for a missing artifact or run
            return None
        return pd.read_csv(path, dtype=dtype, keep_default_na=dtype is not str)


def version_reference(run_id: str):
    """The data record (key, split, group, label, fitted) of a registered version's run, or None when absent."""
    return version_table(run_id, REFERENCE_ARTIFACT)
