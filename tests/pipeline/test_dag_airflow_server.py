"""The retraining DAG under a real Airflow 3 (scheduler, DAG processor, API server, LocalExecutor,
SQLite, all on 127.0.0.1), in a git + DVC copy of the project whose DVC remote is moto's S3 server:

1. a run triggered through the REST API runs every stage through DVC: dvc.lock is committed with
   every stage, the DVC remote holds every cached output;
2. a second run, with nothing new, skips every stage (and commits nothing): the weekly run that unpausing
   starts, queued behind the first (or ahead of it, then the triggered run is the no-op one); when Airflow
   starts none, a second run triggered through the REST API;
3. after a params change, an asset event posted through the REST API starts a run that reruns only
   the stage whose params changed;
4. a new export from another scanner (accumulated onto the first): the monitor calls it drift, the alert task
   posts it to a webhook receiver on 127.0.0.1 once (it was skipped in every run before), and the run retrains
   and registers.

Slow (minutes): run this file alone. Durations are printed (-s), not asserted (BENCHMARKS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.airflow_server import AirflowServer
from tests.services import MotoS3, WebhookReceiver
from tests.tiny import copy_project, wiring_params, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAG_ID = "kidney_ct_retraining"
BIN = Path(sys.executable).parent
BUCKET = "kidney-ct-dvc"
STAGE_TASKS = ("generate", "ingest", "monitor", "validate", "preprocess", "augment", "backbone", "features", "train[0]",
               "evaluate", "leakage", "report", "register", "package")
DVC_STAGES = tuple(t.replace("train[0]", "train@paper_cnn") for t in STAGE_TASKS)


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                          capture_output=True, text=True).stdout


def dvc(project: Path, *args: str) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=project, check=True, capture_output=True, text=True)


def make_workspace(root: Path, s3: MotoS3) -> Path:
    """A git + DVC copy of the project on tiny params, its default DVC remote on moto's S3."""
    project = copy_project(root / "project")
    raw = wiring_params(project, absolute=False)  # the orchestration is under test, not the model
    write_params(raw, project / "params.yaml")
    # a first run on these params: no stage's lock entry may already match (the checkout's dvc.lock can, for a
    # stage whose params tiny runs share, and a stage whose lock does not change commits nothing)
    (project / "dvc.lock").unlink(missing_ok=True)
    git(project, "init", "-q", "-b", "retraining")
    if not (project / ".dvc").is_dir():
        dvc(project, "init", "-q")
    dvc(project, "remote", "add", "-d", "store", f"s3://{BUCKET}/cache")
    dvc(project, "remote", "modify", "store", "endpointurl", s3.endpoint)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "workspace")
    return project


@pytest.fixture
def airflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3 = MotoS3().start().reset()
    s3.client().create_bucket(Bucket=BUCKET)
    project = make_workspace(tmp_path, s3)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "KIDNEY_CT_", "MLFLOW_", "BENTOML_", "DVC_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", TF_CPP_MIN_LOG_LEVEL="2", KIDNEY_CT_SALT="airflow-server-salt",
               AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
               PYTHONPATH=str(project), GX_ANALYTICS_ENABLED="False", MLFLOW_ENABLE_TELEMETRY="false")
    server = AirflowServer(home=tmp_path / "airflow_home", dags_folder=project / "dags", env=env)
    try:
        server.start()
        yield server, project, s3
    finally:
        server.stop()
        s3.stop()


def stage_states(server: AirflowServer, run_id: str) -> dict[str, str]:
    states = server.task_states(DAG_ID, run_id)
    return {task: states.get(task) for task in STAGE_TASKS}


def lock_stages(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def cached_md5s(project: Path) -> set[str]:
    """md5 (from dvc.lock) of every out that DVC caches and therefore pushes (not `cache: false`)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        md5s = {out.hash_info.value for out in repo.index.outs if out.use_cache and out.hash_info}
    assert len(md5s) >= 9, md5s  # export, manifest, quarantine, table, arrays, split, policy, model, verdict
    return md5s


def remote_md5s(s3: MotoS3) -> set[str]:
    keys = s3.keys(BUCKET, "cache/files/md5/")
    return {"".join(key.split("/")[-2:]) for key in keys}


def duration_s(run: dict) -> float:
    from datetime import datetime

    start, end = (datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("start_date", "end_date"))
    return round((end - start).total_seconds(), 1)


def test_scheduled_runs_are_dvc_runs_that_skip_what_did_not_change(airflow) -> None:
    server, project, s3 = airflow
    server.wait_for_dag(DAG_ID)
    server.request("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    started = time.monotonic()
    first = server.trigger(DAG_ID)
    runs = server.wait_until_idle(DAG_ID, timeout_s=1500)
    print(f"first run(s) took {round(time.monotonic() - started)} s wall: "
          f"{[(r['dag_run_id'], r['run_type'], duration_s(r)) for r in runs]}")
    # Unpausing may also start the latest weekly run (catchup=False): whichever ran first did the work,
    # and every stage ran exactly once across the runs so far.
    assert {r["state"] for r in runs} == {"success"}, server.log_tails()
    per_run = {r["dag_run_id"]: stage_states(server, r["dag_run_id"]) for r in runs}
    assert first in per_run
    for task in STAGE_TASKS:
        states = sorted(states[task] for states in per_run.values())
        assert states == ["skipped"] * (len(runs) - 1) + ["success"], (task, per_run)

    assert set(DVC_STAGES) <= set(lock_stages(project)), "dvc.lock lacks stages"
    assert git(project, "status", "--porcelain", "dvc.lock", "params.yaml") == ""
    log = git(project, "log", "--format=%s")
    assert not [stage for stage in DVC_STAGES if f": {stage}" not in log], log  # every stage committed its lock
    assert f"{DAG_ID} " in log
    missing = cached_md5s(project) - remote_md5s(s3)
    assert not missing, f"outputs not on the DVC remote: {missing}"
    commits = len(log.splitlines())
    (worker,) = [run_id for run_id, states in per_run.items() if states["generate"] == "success"]
    dag_commits = [line for line in log.splitlines() if line.startswith(f"{DAG_ID} ")]
    assert all(line.startswith(f"{DAG_ID} {worker}: ") for line in dag_commits), dag_commits  # no-op runs: none

    # Nothing new: every stage is skipped, nothing committed. A second run in the runs so far (the weekly one)
    # already was that run (every stage skipped, asserted above); else one is triggered through the REST API.
    if len(per_run) == 1:
        started = time.monotonic()
        rerun = server.trigger(DAG_ID)
        runs = server.wait_until_idle(DAG_ID, timeout_s=900)
        noop = next(r for r in runs if r["dag_run_id"] == rerun)
        print(f"no-op rerun took {round(time.monotonic() - started)} s wall, {duration_s(noop)} s as a run")
        assert noop["state"] == "success"
        assert set(stage_states(server, rerun).values()) == {"skipped"}
        assert len(git(project, "log", "--format=%s").splitlines()) == commits

    # A params change, then an asset event posted through the REST API: only `report` reruns.
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["report"]["calibration_bins"] = 8  # a `report`-only param (bootstrap_resamples also feeds evaluate)
    write_params(raw, project / "params.yaml")
    known = {r["dag_run_id"] for r in runs}
    server.post_asset_event("kidney_ct_pacs_export", extra={"export": "weekly drop"})
    deadline = time.monotonic() + 120
    while not (new := [r for r in server.runs(DAG_ID) if r["dag_run_id"] not in known]):
        assert time.monotonic() < deadline, f"no run after the asset event\n{server.log_tails()}"
        time.sleep(3)
    assert new[0]["run_type"] == "asset_triggered"
    runs = server.wait_until_idle(DAG_ID, timeout_s=900)
    triggered = next(r for r in runs if r["dag_run_id"] == new[0]["dag_run_id"])
    assert triggered["state"] == "success"
    states = stage_states(server, triggered["dag_run_id"])
    assert states["report"] == "success"
    assert {state for task, state in states.items() if task != "report"} == {"skipped"}
    assert lock_stages(project)["report"]["params"]["params.yaml"]["report"]["calibration_bins"] == 8
    assert "calibration_bins: 8" in git(project, "show", "HEAD:params.yaml")
    print(f"asset-triggered run (report only) took {duration_s(triggered)} s")

    # 4. New studies from another vendor's scanner, added to the first export's: drift, one alert, a retrain.
    assert {server.task_states(DAG_ID, r["dag_run_id"]).get("alert") for r in runs} == {"skipped"}
    with WebhookReceiver() as receiver:
        raw = yaml.safe_load((project / "params.yaml").read_text())
        raw["generate"].update(seed=8, patient_offset=1000, reconstruction_kernel="B70f", noise_scale=1.8,
                               manufacturer="OTHER-VENDOR PHANTOM")
        raw["ingest"]["accumulate"] = True
        raw["monitor"]["alert_webhook"] = receiver.url
        write_params(raw, project / "params.yaml")
        shifted = server.trigger(DAG_ID)
        runs = server.wait_until_idle(DAG_ID, timeout_s=1200)
    run = next(r for r in runs if r["dag_run_id"] == shifted)
    states = server.task_states(DAG_ID, shifted)
    print(f"shifted-export run (monitor drift, alert, retrain) took {duration_s(run)} s")
    assert run["state"] == "success", server.log_tails()
    assert (states["monitor"], states["alert"], states["register"]) == ("success", "success", "success"), states
    (alert,) = receiver.received
    assert alert["status"] == "drift" and "kernel" in alert["text"] and shifted in alert["text"]
