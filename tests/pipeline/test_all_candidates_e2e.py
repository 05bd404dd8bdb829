"""One `dvc repro` trains, evaluates and compares all six study candidates on the tiny generated export.

Opt-in (KIDNEY_CT_ALL_CANDIDATES=1): ResNet50 and InceptionV3 make it ~13 minutes on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.train.candidates import study_candidates
from tests.tiny import copy_project, run, tiny_params, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("KIDNEY_CT_ALL_CANDIDATES") != "1",
                                 reason="about 13 min on 2 CPU cores: set KIDNEY_CT_ALL_CANDIDATES=1 to run it")]
BIN = Path(sys.executable).parent


def test_all_six_candidates_in_one_run(tmp_path):
    project = copy_project(tmp_path / "project")
    raw = tiny_params(project, absolute=False)
    raw["train"]["candidates"] = {name: c.model_dump() | {"epochs": 1, "batch_size": 8, "image_size": None}
                                  for name, c in study_candidates().items()}
    raw["train"]["candidates"]["paper_cnn"].update(filters=[8, 16], dense_units=16)
    raw["train"]["candidates"]["vit"].update(patch_size=8, vit_dim=32, vit_depth=2)
    write_params(raw, project / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")}
    env.update(PATH=f"{BIN}:{env['PATH']}", TF_CPP_MIN_LOG_LEVEL="2", KIDNEY_CT_SALT="e2e-salt")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    started = time.perf_counter()
    done = run([str(BIN / "dvc"), "repro", "evaluate"], project, env)
    print(f"dvc repro evaluate with six candidates: {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert set(metrics) == set(study_candidates())
    for name, row in metrics.items():
        assert {"macro_precision", "macro_recall", "macro_f1", "accuracy", "test_loss", "parameters",
                "training_seconds", "inference_ms_per_image"} <= set(row), name
    table = (project / "reports/evaluate/comparison.md").read_text()
    print(table)
    assert all(f"| {name} |" in table for name in metrics)
    assert (project / "reports/evaluate/plots/comparison.png").stat().st_size > 5000
    verdict = json.loads((project / "reports/evaluate/verdict.json").read_text())
    assert verdict["winner"] in metrics
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns.db'}")
    parents = {client.get_run(v["run_id"]).data.tags.get("mlflow.parentRunId") for v in verdict["candidates"].values()}
    assert len(parents) == 1 and None not in parents, "every candidate nests under one parent run"
    parent = client.get_run(parents.pop())
    assert parent.data.tags["winner"] == verdict["winner"] and parent.info.status == "FINISHED"
