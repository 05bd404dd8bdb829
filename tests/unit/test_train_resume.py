"""Resume after interruption: in-process continuation, and a real SIGKILL of the train stage CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.common.params import AugmentParams, CandidateParams
from components.lib.training import STATE_FILE, SplitArrays, read_checkpoint, train_candidate
from tests.tiny import MILD_AUGMENT, REPO, tiny_params, write_params


def tiny_data(n: int = 32, size: int = 24) -> SplitArrays:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), n // 4)
    x = (rng.integers(0, 40, (n, size, size, 1)) + (y * 60)[:, None, None, None]).astype(np.uint8)
    return SplitArrays(x, y, x[::4], y[::4], pixel_mean=float(x.mean() / 255), pixel_variance=float((x / 255).var()))


def candidate(epochs: int) -> CandidateParams:
    return CandidateParams(filters=[4, 8], dense_units=8, epochs=epochs, batch_size=8, patience=50)


def test_a_second_call_continues_from_the_last_saved_epoch(tmp_path):
    data, folder = tiny_data(), tmp_path / "ckpt"
    first = train_candidate("cnn", candidate(2), AugmentParams(**MILD_AUGMENT), data, 4, 0, [], verbose=0, checkpoint_dir=folder,
                            extra_state={"run_id": "abc"})
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["epochs_done"] == 2 and state["run_id"] == "abc" and len(state["history"]["loss"]) == 2
    # same params but more epochs: the fingerprint differs, so nothing is resumed
    assert read_checkpoint(folder, "other") is None
    second = train_candidate("cnn", candidate(2), AugmentParams(**{**MILD_AUGMENT, "rotation": 0.1}), data, 4, 0, [], verbose=0,
                             checkpoint_dir=folder)
    assert second.resumed_from_epoch == 0  # augment changed -> fresh start
    third = train_candidate("cnn", candidate(2), AugmentParams(**{**MILD_AUGMENT, "rotation": 0.1}), data, 4, 0, [], verbose=0,
                            checkpoint_dir=folder)
    assert third.resumed_from_epoch == 2 and len(third.history["loss"]) == 2  # already done: nothing re-trained
    assert first.history["loss"] != second.history["loss"]


def write_arrays(folder: Path, data: SplitArrays) -> None:
    folder.mkdir(parents=True)
    for name, array in {"X_train": data.x_train, "y_train": data.y_train, "X_val": data.x_val,
                        "y_val": data.y_val}.items():
        np.save(folder / f"{name}.npy", array)
    (folder / "stats.json").write_text(json.dumps({"train_pixel_mean": data.pixel_mean,
                                                   "train_pixel_variance": data.pixel_variance}))


@pytest.mark.slow
def test_killed_train_stage_resumes_from_its_last_epoch(tmp_path):
    raw = tiny_params(tmp_path)
    raw["train"]["candidates"]["paper_cnn"].update(epochs=25, patience=50)
    params = write_params(raw, tmp_path / "params.yaml")
    write_arrays(Path(raw["paths"]["prepared"]) / "arrays", tiny_data(n=96, size=48))
    state_file = Path(raw["paths"]["checkpoints"]) / "paper_cnn" / STATE_FILE
    cmd = [sys.executable, "-m", "components.train", "--params", str(params), "--candidate", "paper_cnn"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_URI": raw["mlflow"]["tracking_uri"]}
    victim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (state_file.is_file() and json.loads(state_file.read_text())["epochs_done"] >= 2):
        assert victim.poll() is None and time.time() < deadline, "training ended or stalled before epoch 2"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = json.loads(state_file.read_text())
    assert 2 <= killed["epochs_done"] < 25
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming paper_cnn after epoch {killed['epochs_done']}" in resumed.stderr
    run = json.loads((Path(raw["paths"]["models"]) / "paper_cnn" / "run.json").read_text())
    history = json.loads((Path(raw["paths"]["models"]) / "paper_cnn" / "history.json").read_text())
    assert run["resumed_from_epoch"] == killed["epochs_done"] and run["run_id"] == killed["run_id"]
    assert len(history["loss"]) == 25
    assert history["loss"][:killed["epochs_done"]] == killed["history"]["loss"]
    assert not state_file.parent.exists()  # cleared once the outputs are written


def test_each_epoch_is_logged_to_mlflow_by_the_keras_callback(tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from components.train.__main__ import epoch_logger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("epoch-logger")  # not an experiment id an earlier test left active for another store
    with mlflow.start_run() as run:
        result = train_candidate("cnn", candidate(3), AugmentParams(**MILD_AUGMENT), tiny_data(), 4, 0, [epoch_logger()],
                                 verbose=0)
    client = MlflowClient(tracking_uri=uri)
    for key in ("loss", "val_loss", "val_f1"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
        assert [m.value for m in history] == pytest.approx(result.history[key]), key
    logged = client.get_run(run.info.run_id).data
    assert not any(key.startswith("validation_") for key in logged.metrics)
    assert logged.params["optimizer_name"] and "optimizer_learning_rate" in logged.params
    assert "model_summary.txt" in [f.path for f in client.list_artifacts(run.info.run_id)]

