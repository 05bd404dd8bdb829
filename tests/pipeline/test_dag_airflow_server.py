"""The retraining DAG under a real multi-worker Airflow 3: scheduler, DAG processor and API server, the
CeleryExecutor with a Redis broker (Debian's redis-server) and two Celery workers as separate processes, `cpu`
consuming the default queue and `gpu` the `train` queue and the default one, as CPU and GPU nodes would (SQLite,
all on 127.0.0.1). The DAG file is the project's, unchanged; env KIDNEY_CT_TRAIN_QUEUE=train routes `train`. The
workspace, a git + DVC copy of the session's finished tiny pipeline (tests/pipeline/conftest.py: every stage in
dvc.lock, a champion registered) whose DVC remote is moto's S3 server, is shared by both workers as an RWX volume
would be:

1. nothing new: the weekly run that unpausing starts (or, where none comes, one triggered through the REST API)
   costs one `changes` task (one `dvc status`, which also pushes every cached output to the DVC remote): every
   stage task is skipped without starting, nothing is committed;
2. a new export from another scanner (accumulated onto the first), announced by an asset event posted through
   the REST API: the asset-triggered run reruns every stage whose deps or params changed through DVC (each commits
   its dvc.lock entry, the remote holds every output) and skips the one that did not (`backbone`); the monitor calls
   it drift, the alert task posts it to a webhook receiver on 127.0.0.1 once, and the run retrains and registers.
   Both workers take work (the task instances' hostnames), train only on `gpu`. In the middle of a stage on `cpu`,
   that worker and everything it started are SIGKILLed (a node lost): Airflow's heartbeat timeout (20 s here) fails
   the try, the retry runs on `gpu`, the run succeeds, and nothing is committed or registered twice.

Slow (minutes): run this file alone. Durations are printed (-s), not asserted (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.airflow_server import AirflowServer
from tests.pipeline.conftest import TinyPipeline
from tests.services import MotoS3, Redis, WebhookReceiver, redis_available
from tests.tiny import wiring_params, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAG_ID = "kidney_ct_retraining"
BIN = Path(sys.executable).parent
BUCKET = "kidney-ct-dvc"
STAGE_TASKS = ("generate", "ingest", "monitor", "validate", "preprocess", "augment", "backbone", "features", "train[0]",
               "evaluate", "leakage", "report", "register", "package")
DVC_STAGES = tuple(t.replace("train[0]", "train@paper_cnn") for t in STAGE_TASKS)
WORKERS = {"cpu": "default", "gpu": "train,default"}  # name -> queues; `cpu` is the one lost mid-stage
KILLABLE = {"validate", "preprocess", "augment", "features", "leakage", "evaluate", "report", "monitor", "package"}


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True,
                          capture_output=True, text=True).stdout


def dvc(project: Path, *args: str) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=project, check=True, capture_output=True, text=True)


def make_workspace(root: Path, s3: MotoS3, pipeline: TinyPipeline) -> Path:
    """A git + DVC copy of the finished tiny pipeline (outputs, DVC cache, registry, Bento store; its own git
    history), on branch `retraining`, its default DVC remote on moto's S3."""
    project = root / "project"
    shutil.copytree(pipeline.project, project, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    git(project, "init", "-q", "-b", "retraining")
    dvc(project, "remote", "add", "-d", "store", f"s3://{BUCKET}/cache")
    dvc(project, "remote", "modify", "store", "endpointurl", s3.endpoint)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "workspace")
    return project


@pytest.fixture
def airflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_pipeline: TinyPipeline):
    if why := redis_available():
        pytest.skip(f"the multi-worker Airflow needs a Celery broker: {why}")
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3 = MotoS3().start().reset()
    s3.client().create_bucket(Bucket=BUCKET)
    redis = Redis(tmp_path / "redis").start()
    project = make_workspace(tmp_path, s3, tiny_pipeline)
    ran_in = tiny_pipeline.env()  # PATH with the venv first, the salt the workspace's data was ingested with
    env = {k: v for k, v in ran_in.items() if not k.startswith(("AIRFLOW", "KIDNEY_CT_", "MLFLOW_", "BENTOML_", "DVC_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KIDNEY_CT_SALT=ran_in["KIDNEY_CT_SALT"],
               AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
               PYTHONPATH=str(project), GX_ANALYTICS_ENABLED="False", MLFLOW_ENABLE_TELEMETRY="false",
               KIDNEY_CT_TRAIN_QUEUE="train",
               AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY="3",  # a lost worker's task is retried at once
               AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT="20",
               AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="5")
    server = AirflowServer(home=tmp_path / "airflow_home", dags_folder=project / "dags", env=env,
                           broker=redis.url, workers=dict(WORKERS))
    try:
        server.start()
        yield server, project, s3
    finally:
        server.stop()
        redis.stop()
        s3.stop()


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


def weekly_run_or_trigger(server: AirflowServer, wait_s: float = 30) -> str:
    """The run unpausing starts (the latest weekly one: catchup=False) or, when none comes within `wait_s`, one
    triggered through the REST API; its id. One run either way: both would find the same nothing to do."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        runs = server.runs(DAG_ID)
        if runs:
            return runs[0]["dag_run_id"]
        time.sleep(2)
    return server.trigger(DAG_ID)


def kill_cpu_worker_mid_stage(server: AirflowServer, run_id: str, timeout_s: float = 600) -> str:
    """Wait for a stage task that has run on worker `cpu` for 4 s, SIGKILL that worker's session; the task's id."""
    from datetime import UTC, datetime

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ti in server.task_instances(DAG_ID, run_id):
            if ti["task_id"] in KILLABLE and ti["state"] == "running" and ti.get("hostname") == "cpu":
                started = datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00"))
                if (datetime.now(UTC) - started).total_seconds() >= 4:
                    server.kill_worker("cpu")
                    return ti["task_id"]
        time.sleep(0.5)
    raise AssertionError(f"worker `cpu` ran no stage task long enough to be killed\n{server.log_tails()}")


def test_scheduled_runs_are_dvc_runs_that_skip_what_did_not_change(airflow) -> None:
    server, project, s3 = airflow
    server.wait_for_dag(DAG_ID)
    commits = git(project, "log", "--format=%s").splitlines()
    server.request("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    started = time.monotonic()
    first = weekly_run_or_trigger(server)
    runs = server.wait_until_idle(DAG_ID, timeout_s=900)
    print(f"no-op run took {round(time.monotonic() - started)} s wall: "
          f"{[(r['dag_run_id'], r['run_type'], duration_s(r)) for r in runs]}")
    # 1. Nothing new since dvc.lock: one status check, every stage skipped unstarted, nothing committed, every cached
    # output pushed.
    assert first in {r["dag_run_id"] for r in runs}
    assert {r["state"] for r in runs} == {"success"}, server.log_tails()
    for run in runs:  # one, unless a late weekly run joined the triggered one: then both are no-op runs
        instances = server.task_instances(DAG_ID, run["dag_run_id"])
        states = {ti["task_id"]: ti["state"] for ti in instances}
        assert states.pop("changes") == "success"
        assert set(states.values()) == {"skipped"}, (run["dag_run_id"], states)  # train unexpanded: one instance
        assert {ti["task_id"] for ti in instances} >= {task.split("[")[0] for task in (*STAGE_TASKS, "alert")}
        started = [(ti["task_id"], ti["hostname"]) for ti in instances if ti["task_id"] != "changes" and ti["hostname"]]
        assert not started, f"skipped stages ran on a worker: {started}"
    assert git(project, "log", "--format=%s").splitlines() == commits
    missing = cached_md5s(project) - remote_md5s(s3)
    assert not missing, f"outputs not on the DVC remote: {missing}"

    # 2. New studies from another vendor's scanner, added to the first export's, announced by an asset event:
    # every stage they reach reruns through DVC, drift, one alert, a retrain.
    known = {r["dag_run_id"] for r in runs}
    with WebhookReceiver() as receiver:
        raw = wiring_params(project, absolute=False)  # the orchestration is under test, not the model
        raw["generate"].update(seed=8, patient_offset=1000, reconstruction_kernel="B70f", noise_scale=1.8,
                               manufacturer="OTHER-VENDOR PHANTOM")
        raw["ingest"]["accumulate"] = True
        raw["monitor"]["alert_webhook"] = receiver.url
        write_params(raw, project / "params.yaml")
        server.post_asset_event("kidney_ct_pacs_export", extra={"export": "weekly drop"})
        deadline = time.monotonic() + 120
        while not (new := [r for r in server.runs(DAG_ID)
                           if r["dag_run_id"] not in known and r["run_type"] == "asset_triggered"]):
            assert time.monotonic() < deadline, f"no run after the asset event\n{server.log_tails()}"
            time.sleep(3)
        killed = kill_cpu_worker_mid_stage(server, new[0]["dag_run_id"])
        runs = server.wait_until_idle(DAG_ID, timeout_s=1200)
    run = next(r for r in runs if r["dag_run_id"] == new[0]["dag_run_id"])
    shifted, tasks = run["dag_run_id"], server.task_states(DAG_ID, run["dag_run_id"])
    states = {task: tasks.get(task) for task in STAGE_TASKS}
    print(f"shifted-export run (monitor drift, alert, retrain) took {duration_s(run)} s")
    assert run["run_type"] == "asset_triggered" and run["state"] == "success", server.log_tails()
    assert states.pop("backbone") == "skipped"  # its params and code did not change: DVC skips it
    assert set(states.values()) == {"success"}, states
    assert tasks["alert"] == "success"
    (alert,) = receiver.received
    monitor = json.loads((project / "reports" / "monitor" / "monitor.json").read_text())
    assert "kernel" in monitor["drifted"]  # and the champion's score on the new cases may have dropped too: degraded
    assert alert["status"] == monitor["status"] in {"drift", "degraded"}
    assert "kernel" in alert["text"] and shifted in alert["text"]

    # Both workers took work, train only the GPU one; the lost worker's stage was retried on the other, once.
    instances = server.task_instances(DAG_ID, shifted)
    tries = server.task_tries(DAG_ID, shifted, killed)
    print(f"killed `cpu` in the middle of {killed}: tries {[(t['try_number'], t['hostname'], t['state']) for t in tries]}")
    print("hosts:", sorted((ti["task_id"], ti["hostname"], ti["queue"]) for ti in instances if ti.get("hostname")))
    assert [(t["hostname"], t["state"]) for t in tries] == [("cpu", "failed"), ("gpu", "success")], tries
    worked = {ti["hostname"] for ti in instances if ti["state"] == "success"} | {t["hostname"] for t in tries}
    assert worked == {"cpu", "gpu"}, instances
    assert {(ti["hostname"], ti["queue"]) for ti in instances if ti["task_id"] == "train"} == {("gpu", "train")}

    # Each stage that ran committed its dvc.lock entry on the branch; the lock and params.yaml record the new export.
    assert set(DVC_STAGES) <= set(lock_stages(project)), "dvc.lock lacks stages"
    assert git(project, "status", "--porcelain", "dvc.lock", "params.yaml") == ""
    log = git(project, "log", "--format=%s").splitlines()
    ran = [stage for stage in DVC_STAGES if stage != "backbone"]
    assert {stage: log.count(f"{DAG_ID} {shifted}: {stage}") for stage in ran} == dict.fromkeys(ran, 1), log
    assert lock_stages(project)["generate"]["params"]["params.yaml"]["generate"]["seed"] == 8
    assert "manufacturer: OTHER-VENDOR PHANTOM" in git(project, "show", "HEAD:params.yaml")
    missing = cached_md5s(project) - remote_md5s(s3)
    assert not missing, f"outputs not on the DVC remote: {missing}"
    registration = json.loads((project / "reports" / "register" / "registration.json").read_text())
    assert registration["registered"] and registration["version"] == 2, registration  # the workspace's was v1
