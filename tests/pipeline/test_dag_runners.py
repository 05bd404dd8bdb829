"""Where a stage runs is decided by configuration when the DAG file is parsed (env only, no DB):
the default shape runs every stage through DVC on the worker; `kubernetes` makes the task itself a
KubernetesPodOperator (train: mapped, one pod per candidate) running the same `dvc_run` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.stage_graph import project_stage_graph
from tests.pipeline.test_dag import DAG_ID, DAGS, PARSE_SCRIPT, isolate_airflow, run_python, unexpected_touches

SHAPE_SCRIPT = PARSE_SCRIPT.replace('print("REPORT:" + json.dumps(report))', r'''
def describe(t):
    op = getattr(t, "partial_kwargs", None) or {}
    get = lambda name: op.get(name, getattr(t, name, None))
    resources = get("container_resources")
    limits, requests = (resources.limits, resources.requests) if resources else (None, None)
    return {"type": type(t).__name__, "operator": getattr(t, "operator_class", type(t)).__name__
            if not isinstance(getattr(t, "operator_class", None), dict) else t.operator_class["task_type"],
            "image": get("image"), "namespace": get("namespace"), "arguments": get("arguments"),
            "limits": limits, "requests": requests, "cmds": get("cmds"),
            "mounts": [m.mount_path for m in get("volume_mounts") or []],
            "claims": [v.persistent_volume_claim.claim_name for v in get("volumes") or []],
            "env_from": [(e.config_map_ref or e.secret_ref).name for e in get("env_from") or []], "skip_on_exit_code": get("skip_on_exit_code"), "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
            "mapped": bool(getattr(t, "is_mapped", False))}
if dag is not None:
    report["shapes"] = {t.task_id: describe(t) for t in dag.tasks}
print("REPORT:" + json.dumps(report))''')

CPU, GPU = "reg/kct-cpu@sha256:" + "c" * 64, "reg/kct-gpu@sha256:" + "9" * 64
STAGES = tuple(project_stage_graph())  # every stage of dvc.yaml


def parse_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict:
    isolate_airflow(monkeypatch, tmp_path / "airflow_home", f"sqlite:///{tmp_path / 'no-dir' / 'airflow.db'}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "cwd").mkdir()
    return run_python(SHAPE_SCRIPT, str(DAGS), DAG_ID, cwd=tmp_path / "cwd")


def test_default_shape_runs_every_stage_through_dvc_on_the_worker(tmp_path, monkeypatch) -> None:
    report = parse_with(tmp_path, monkeypatch, {})
    assert report["import_errors"] == {} and unexpected_touches(report["touched"]) == []
    shapes = report["shapes"]
    assert {shapes[s]["type"] for s in STAGES} <= {"_PythonDecoratedOperator", "DecoratedMappedOperator"}
    assert "KubernetesPodOperator" not in json.dumps(shapes)
    assert {shapes[s]["trigger_rule"] for s in STAGES} == {"none_failed"}  # a skipped (unchanged) stage
    assert shapes["train"]["mapped"] is True


def test_kubernetes_shape_makes_the_tasks_pods_chosen_at_parse_time_without_a_db(tmp_path, monkeypatch) -> None:
    env = {"KIDNEY_CT_RUNNERS": json.dumps({"default": "dvc", "train": "kubernetes", "validate": "kubernetes"}),
           "KIDNEY_CT_KUBERNETES": json.dumps({"namespace": "ml", "gpu_image": GPU, "cpu_image": CPU})}
    report = parse_with(tmp_path, monkeypatch, env)
    assert report["import_errors"] == {}
    assert unexpected_touches(report["touched"]) == [], "choosing the shape must not touch a DB, a run's params or network"
    assert not (tmp_path / "no-dir").exists()
    shapes = report["shapes"]

    validate = shapes["validate"]
    assert validate["type"] == "KubernetesPodOperator" and validate["namespace"] == "ml"
    assert validate["image"] == CPU and validate["limits"] is None
    assert validate["arguments"][:3] == ["/workspace", "components.common.dvc_run", "validate"]
    assert "{{ params.params_file or 'params.yaml' }}" in validate["arguments"]
    assert validate["skip_on_exit_code"] == [99] and validate["trigger_rule"] == "none_failed"

    train = shapes["train"]
    assert train["mapped"] is True and train["operator"] == "KubernetesPodOperator"
    assert train["image"] == GPU and train["limits"] == {"nvidia.com/gpu": "1"}
    assert "list_candidates" in report["tasks"]["train"]["upstream"]
    assert shapes["ingest"]["type"] == "_PythonDecoratedOperator"  # not named: the default runner
    assert report["tasks"]["ingest"]["outlets"] == ["kidney_ct_ingested_manifest"]


@pytest.mark.parametrize("runners, pod, message", [
    ('{"train": "slurm"}', "{}", "slurm"), ("{train", "{}", "not valid JSON"), ('{"trian": "dvc"}', "{}", "unknown stages"),
    ('{"train": "kubernetes"}', '{"cpu_image": "reg/kct-cpu:latest"}', "pinned by digest")])
def test_a_wrong_runner_setting_is_an_import_error_that_says_why(tmp_path, monkeypatch, runners, pod, message) -> None:
    report = parse_with(tmp_path, monkeypatch, {"KIDNEY_CT_RUNNERS": runners, "KIDNEY_CT_KUBERNETES": pod})
    assert DAG_ID not in report["dag_ids"]
    assert any(message in error for error in report["import_errors"].values())
