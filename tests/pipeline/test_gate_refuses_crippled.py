"""The gate is on and it bites: a crippled candidate fails evaluate, register refuses it, the champion stays.

Through the real stage CLIs, in a copy of the session's tiny pipeline (tests/pipeline/conftest.py: gate off, as
tiny runs are, so it registered a champion): the gate is switched on (the default's minimums) and a deliberately
crippled candidate is trained (one epoch at a learning rate that cannot move the weights, so it predicts one class
for everything).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny import REPO, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def stage(name: str, params: Path, cwd: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"components.{name}", "--params", str(params), *extra], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def champion_and_versions(raw: dict) -> tuple[str, list[str]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=raw["mlflow"]["tracking_uri"])
    name = raw["register"]["model_name"]
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
    return str(client.get_model_version_by_alias(name, "champion").version), versions


def test_crippled_candidate_fails_the_gate_is_refused_and_the_champion_stays(tiny_pipeline, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_pipeline.project, project, ignore=shutil.ignore_patterns(".git", ".dvc"))
    raw = yaml.safe_load((project / "params.yaml").read_text())  # paths relative to the project
    raw["paths"] = {key: str(project / value) for key, value in raw["paths"].items()}
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{project / 'mlruns.db'}"
    raw["package"]["bentoml_home"] = str(project / ".bentoml")
    env = {**tiny_pipeline.env(), "PYTHONPATH": str(REPO), "MLFLOW_ENABLE_TELEMETRY": "false"}  # its salt too
    champion_before, versions_before = champion_and_versions(raw)
    assert champion_before == "1" and versions_before == ["1"]

    default_gate = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]
    assert default_gate["min_macro_f1"] >= 0.9 and default_gate["min_class_recall"] >= 0.85, "the default gate is on"
    crippled = dict(raw["train"]["candidates"]["paper_cnn"], epochs=1, learning_rate=1e-9)
    raw["train"]["candidates"] = {"crippled": crippled}
    raw["evaluate"] = {**raw["evaluate"], **default_gate}
    params = write_params(raw, project / "params.yaml")

    trained = stage("train", params, project, env, "--candidate", "crippled")
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = stage("evaluate", params, project, env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    verdict = json.loads((Path(raw["paths"]["evaluation"]) / "verdict.json").read_text())
    assert verdict["winner"] is None
    entry = verdict["candidates"]["crippled"]
    assert entry["passed"] is False
    assert any("macro-F1" in reason and "below the minimum" in reason for reason in entry["reasons"]), entry
    assert "crippled: accuracy" in evaluated.stderr and "FAILED" in evaluated.stderr

    refused = stage("register", params, project, env)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "no candidate passed the evaluation gates, nothing registered" in refused.stderr, refused.stderr
    assert "crippled: " in refused.stderr and "below the minimum" in refused.stderr, refused.stderr
    registration = json.loads((Path(raw["paths"]["registration"]) / "registration.json").read_text())
    assert registration["registered"] is False and registration["gate_passed"] is False

    assert champion_and_versions(raw) == (champion_before, versions_before)
