"""`python -m components.register` leaves every registered version with its evidence and a model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.package_support import CLASSES, IMAGE_SIZE, tiny_keras_model
from tests.tiny import REPO, tiny_params, write_params


def logged_run(uri: str, x: np.ndarray, artifacts: Path) -> tuple[str, str]:
    """A training-like MLflow run holding a tiny Keras model with a signature; (run_id, model_uri)."""
    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("kidney-ct")
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        "kidney-ct", artifact_location=artifacts.as_uri())
    model = tiny_keras_model()
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags({"data_version": "d1"})
        mlflow.log_params({"candidate": "paper_cnn", "epochs": 1})
        info = mlflow.keras.log_model(model, name="model", pip_requirements=["keras"],
                                      signature=infer_signature(x[:1], np.asarray(model.predict(x[:1], verbose=0))))
    return run.info.run_id, info.model_uri


def test_registered_version_carries_provenance_metrics_example_and_card(tmp_path):
    raw = tiny_params(tmp_path)
    raw["preprocess"]["image_size"] = IMAGE_SIZE
    params = write_params(raw, tmp_path / "params.yaml")
    paths, uri = raw["paths"], raw["mlflow"]["tracking_uri"]
    arrays = Path(paths["prepared"]) / "arrays"
    arrays.mkdir(parents=True)
    x = np.random.default_rng(0).integers(0, 256, (8, IMAGE_SIZE, IMAGE_SIZE, 1)).astype("float32")
    np.save(arrays / "X_test.npy", x)
    np.save(arrays / "y_test.npy", np.arange(8) % 4)
    Path(paths["ingested"]).mkdir(parents=True)
    keys = [f"images/{CLASSES[i % 4]}/k{i}.dcm" for i in range(8)]
    (Path(paths["ingested"]) / "manifest.csv").write_text("key,label,group,series\n" + "".join(
        f"{key},{CLASSES[i % 4]},g{i},s{i}\n" for i, key in enumerate(keys)))
    (arrays.parent / "split.csv").write_text("split,group,key\n" + "".join(f"test,g{i},{key}\n"
                                                                           for i, key in enumerate(keys)))
    (Path(paths["models"]) / "paper_cnn").mkdir(parents=True)
    (Path(paths["models"]) / "paper_cnn" / "run.json").write_text(json.dumps({"fitted_on": ["train"]}))
    run_id, model_uri = logged_run(uri, x, tmp_path / "mlartifacts")
    metrics = {"accuracy": 0.5, "macro_f1": 0.4, "test_images": 8,
               "per_class": {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for c in CLASSES}}
    evaluation = Path(paths["evaluation"])
    evaluation.mkdir(parents=True)
    (evaluation / "metrics.json").write_text(json.dumps({"paper_cnn": metrics}))
    (evaluation / "study").mkdir()
    (evaluation / "study" / "paper_cnn.json").write_text(json.dumps({"pooling": "mean"}))  # evaluate's study model
    (evaluation / "verdict.json").write_text(json.dumps({"winner": "paper_cnn", "candidates": {"paper_cnn": {
        "passed": True, "reasons": [], "run_id": run_id, "model_uri": model_uri, "gate_metric": 0.4}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_TELEMETRY": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "components.register", "--params", str(params)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("kidney-ct-classifier", "champion")
    tags = version.tags
    assert len(tags["git_commit"]) >= 40 and tags["gate_passed"] == "true" and tags["test_macro_f1"] == "0.4000"
    assert tags["data_manifest_sha256"] != "unknown" and tags["dvc_manifest_md5"] == "no dvc.lock"
    assert json.loads(tags["signature"])["inputs"] and len(tags["params_sha256"]) == 16
    history = client.get_registered_model("kidney-ct-classifier").tags["champion_history"]
    assert json.loads(history) == [str(version.version)]
    local = Path(client.download_artifacts(run_id, "registration", str(tmp_path / "dl")))
    card = (local / "model_card.md").read_text()
    assert "Not a substitute for a radiologist" in card and "Macro-F1: 0.400" in card
    example = np.array(json.loads((local / "input_example.json").read_text())["inputs"])
    assert example.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 1)
    assert json.loads((local / "params.json").read_text())["preprocess"]["image_size"] == IMAGE_SIZE
    assert (Path(paths["registration"]) / "model_card.md").read_text() == card
    reference = (local / "reference.csv").read_text().splitlines()  # the data record the monitor compares with
    assert reference[0] == "key,split,group,series,label,fitted" and len(reference) == 1 + 8
    assert reference[1] == f"{keys[0]},test,g0,s0,Normal,false" and tags["series_pooling"] == "mean"
