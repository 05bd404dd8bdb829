"""No fake PHI planted by `generate` survives anywhere downstream: not in an object written to storage
(moto S3), not in a local output, not in a log line, not in an MLflow param or tag.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common.params import GenerateParams
from tests.phi import files_under, find_phi, planted_phi
from tests.services import MotoS3
from tests.tiny import REPO, tiny_params, write_params

STAGES = ("generate", "ingest", "validate", "preprocess", "augment")


@pytest.fixture
def s3(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    server = MotoS3().start().reset()
    yield server
    server.stop()


def run_stage(stage: str, params: Path, env: dict, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", f"components.{stage}", "--params", str(params), *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{stage} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def mlflow_texts(tracking_uri: str) -> list[tuple[str, bytes]]:
    """Every param and tag (key and value) of every run in the tracking store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    texts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            for kind, items in (("param", run.data.params), ("tag", run.data.tags)):
                texts += [(f"mlflow {kind} {key}", f"{key}={value}".encode()) for key, value in items.items()]
    return texts


@pytest.mark.slow
def test_no_planted_phi_in_storage_outputs_logs_or_mlflow(tmp_path, s3):
    raw = tiny_params(tmp_path)
    raw["paths"]["store"] = "s3://phi-scan/store"
    raw["storage"]["endpoint_url"] = s3.endpoint
    candidate = next(iter(raw["train"]["candidates"]))
    raw["train"]["candidates"][candidate]["epochs"] = 1
    params = write_params(raw, tmp_path / "params.yaml")
    s3.client().create_bucket(Bucket="phi-scan")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL")}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", KIDNEY_CT_SALT="phi-scan-salt",
               TF_CPP_MIN_LOG_LEVEL="2")
    logs = [run_stage(stage, params, env) for stage in STAGES]
    logs.append(run_stage("train", params, env, "--candidate", candidate))

    phi = planted_phi(GenerateParams(**raw["generate"]), raw["classes"])
    export = Path(raw["paths"]["generated_export"])
    assert find_phi(files_under(export), phi), "the scan must see the PHI planted in the source export"
    keys = s3.keys("phi-scan")
    assert sum(key.startswith("store/images/") for key in keys) == 4 * 3 * 4
    objects = [(f"s3://phi-scan/{key}", s3.client().get_object(Bucket="phi-scan", Key=key)["Body"].read())
               for key in keys]
    outputs = list(files_under(tmp_path, skip=[export, params]))
    texts = mlflow_texts(raw["mlflow"]["tracking_uri"])
    assert texts, "train logged no MLflow params"
    log_lines = [(f"log line {n}", line.encode()) for n, line in enumerate("\n".join(logs).splitlines())]
    assert find_phi(objects + outputs + texts + log_lines, phi) == []
    assert yaml.safe_load(params.read_text())["paths"]["store"] == "s3://phi-scan/store"
