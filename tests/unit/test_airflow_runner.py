"""components.common.airflow_runner outside Airflow: importable where no Airflow is installed (a stage's
container), and its parse-time settings (which runner, which pod) need no Airflow either."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from components.common.airflow_runner import (
    changes_task,
    dvc_run_arguments,
    dvc_target,
    pod_container,
    resolve_runners,
    train_queue,
)
from components.common.cluster import cluster_settings
from tests.tiny import REPO

NO_AIRFLOW = r"""
import importlib.abc, json, sys

class NoAirflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"airflow", "kubernetes"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoAirflow())
from components.common import airflow_runner
print(json.dumps({"runners": airflow_runner.resolve_runners(("ingest", "train"), {"KIDNEY_CT_RUNNERS": '{"train": "local"}'}),
                  "airflow": sorted(m for m in sys.modules if m.split(".")[0] == "airflow")}))
"""


def test_importable_without_airflow() -> None:
    done = subprocess.run([sys.executable, "-c", NO_AIRFLOW], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"runners": {"ingest": "dvc", "train": "local"}, "airflow": []}


def test_runners_default_to_dvc_and_refuse_unknown_stages() -> None:
    assert resolve_runners(("a", "b"), {}) == {"a": "dvc", "b": "dvc"}
    assert resolve_runners(("a", "b"), {"KIDNEY_CT_RUNNERS": '{"default": "local", "b": "kubernetes"}'}) == {
        "a": "local", "b": "kubernetes"}
    with pytest.raises(ValueError, match="unknown stages"):
        resolve_runners(("a",), {"KIDNEY_CT_RUNNERS": '{"c": "dvc"}'})


def test_a_training_pod_runs_the_candidate_dvc_stage() -> None:
    cluster = cluster_settings({"cpu_image": "r/c@sha256:" + "c" * 64, "gpu_image": "r/g@sha256:" + "9" * 64}, "test")
    container = pod_container(cluster, dvc_target("train", "wide"))
    assert container.image == cluster.gpu_image
    assert list(container.args)[1:] == dvc_run_arguments("train@wide", "{{ params.params_file or 'params.yaml' }}",
                                                         "kidney_ct_retraining {{ run_id }}")


def test_train_queue_comes_from_the_environment_or_is_the_default_one() -> None:
    assert train_queue({"KIDNEY_CT_TRAIN_QUEUE": " train "}) == {"queue": "train"}
    assert train_queue({"KIDNEY_CT_TRAIN_QUEUE": "  "}) == {} == train_queue({})  # any worker takes it


def test_no_status_check_when_a_stage_runs_untracked() -> None:
    assert changes_task({"ingest": "local", "train": "dvc"}) is None  # DVC cannot say what an untracked stage did
