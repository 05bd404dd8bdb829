"""Test helpers for the registry: tiny versions in a real registry, and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from components.common.procs import stop_process_group
from tests.package_support import CLASSES, IMAGE_SIZE, MODEL_NAME, tiny_keras_model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def register_version(uri: str, gate_passed: bool, artifact_root: Path | None = None, seed: int = 0) -> str:
    """Log a tiny Keras model to `uri`, register it, tag it like the register stage; returns the version."""
    import keras
    import mlflow
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.get_experiment_by_name("kidney-ct")
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            "kidney-ct", artifact_location=artifact_root.as_uri() if artifact_root else None)
        keras.utils.set_random_seed(seed)
        with mlflow.start_run(experiment_id=experiment_id):
            info = mlflow.keras.log_model(tiny_keras_model(), name="model", pip_requirements=["keras"])
        version = str(mlflow.register_model(info.model_uri, MODEL_NAME).version)
        tags = {"classes": json.dumps(CLASSES), "image_size": str(IMAGE_SIZE), "window_center": "40",
                "window_width": "400", "gate_passed": str(gate_passed).lower(), "test_macro_f1": "0.5",
                **({} if gate_passed else {"gate_reasons": "macro-F1 0.100 is below the minimum 0.550"})}
        for key, value in tags.items():
            client.set_model_version_tag(MODEL_NAME, version, key, value)
    finally:
        mlflow.set_tracking_uri(previous)
    return version


@contextmanager
def mlflow_server(root: Path):
    """A real `mlflow server` (SQLite backend, proxied artifacts) on 127.0.0.1; yields its URL."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", root / "mlflow-server.log"
    # no Huey job consumers (seven processes, ~22 s of CPU at start): the registry uses no MLflow jobs, nor do we
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination",
             (root / "server-artifacts").as_uri(), "--workers", "1"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(server)


def run_registry(cwd: Path, *args: str, uri: str | None = None) -> subprocess.CompletedProcess:
    """`python -m components.registry ...` in `cwd`, optionally against `uri`."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), MLFLOW_ENABLE_TELEMETRY="false")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, "-m", "components.registry", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
