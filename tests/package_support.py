"""Test helpers for the package stage and the service: a real MLflow registry holding a tiny Keras model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
IMAGE_SIZE = 32
MODEL_NAME = "kidney-ct-classifier"


def tiny_keras_model(size: int = IMAGE_SIZE, n_classes: int = len(CLASSES)):
    """Input(size, size, 1) -> Conv2D(4) -> GlobalAveragePooling2D -> Dense(softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_classes, activation="softmax")(x))


def register_tiny_model(root: Path, model_name: str = MODEL_NAME, champion: bool = True,
                        extra_tags: dict[str, str] | None = None) -> str:
    """Log + register a tiny model in the sqlite registry under `root` (its serving tags, plus `extra_tags`);
    returns the version."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlruns.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.get_experiment_by_name("kidney-ct")
        experiment_id = (experiment.experiment_id if experiment else
                         client.create_experiment("kidney-ct", artifact_location=(root / "mlartifacts").as_uri()))
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.keras.log_model(tiny_keras_model(), name="model", pip_requirements=["keras"])
        version = mlflow.register_model(info.model_uri, model_name).version
        tags = {"classes": json.dumps(CLASSES), "image_size": str(IMAGE_SIZE),
                "window_center": "40", "window_width": "400", **(extra_tags or {})}
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        if champion:
            client.set_registered_model_alias(model_name, "champion", version)
    finally:
        mlflow.set_tracking_uri(previous)
    return str(version)


def write_project(root: Path, champion_version: str, gate_passed: bool = True, **register: str) -> Path:
    """params.yaml (the project's, with `register` overrides) + registration.json under `root`."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["register"].update(register)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    registration = root / params["paths"]["registration"] / "registration.json"
    registration.parent.mkdir(parents=True, exist_ok=True)
    registration.write_text(json.dumps({"gate_passed": gate_passed, "champion_version": champion_version}))
    return root / "params.yaml"


def run_package(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m components.package` in `cwd` (a fresh process: BentoML reads BENTOML_HOME once)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("BENTOML_HOME", "MLFLOW_TRACKING_URI")}
    clean.update(PYTHONPATH=str(PROJECT_ROOT), BENTOML_DO_NOT_TRACK="True", **env)
    return subprocess.run([sys.executable, "-m", "components.package"], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=300)


def write_validation_slices(root: Path, slices: int = 24, size: int = IMAGE_SIZE, per_series: int = 4) -> Path:
    """data/prepared/arrays/X_val.npy (N, size, size, 1) as preprocess writes it, and split.csv's val rows under
    `root`: the slices package checks a converted model on (the params' paths.prepared)."""
    import numpy as np

    prepared = root / "data" / "prepared"
    (prepared / "arrays").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    np.save(prepared / "arrays" / "X_val.npy", rng.integers(0, 256, (slices, size, size, 1), dtype=np.uint8))
    rows = ["key,label,group,split,sha256,series"] + [
        f"val/{i}.dcm,{CLASSES[(i // per_series) % len(CLASSES)]},g{i // per_series},val,{i:064x},s{i // per_series}"
        for i in range(slices)]
    (prepared / "split.csv").write_text("\n".join(rows) + "\n")
    return prepared
