"""Per-task choice of where a stage runs (local subprocess or Kubernetes pod), by configuration only."""

from __future__ import annotations

from pathlib import Path

from tests.pipeline.test_dag import DAG_FILE, isolate_airflow, run_python

RUNNERS_SCRIPT = r"""
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("kidney_ct_dag", sys.argv[1])
m = sys.modules["kidney_ct_dag"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)

def attempt(call):
    try:
        return call()
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}

variables = {"kidney_ct_runners": json.dumps({"default": "local", "train": "kubernetes"})}
env = {"KIDNEY_CT_RUNNERS": json.dumps({"default": "kubernetes"}),
       "KIDNEY_CT_KUBERNETES": json.dumps({"namespace": "ml", "gpu_image": "reg/kct-gpu:2", "cpu_image": "reg/kct-cpu:2"})}
settings = m.StageSettings(Path("/srv/kidney-ct"), Path("/srv/kidney-ct/conf/params.yaml"))
pod = m.resolve_pod_settings(lambda key: None, env)

def describe(op):
    limits = op.container_resources.limits if op.container_resources else None
    return {"image": op.image, "namespace": op.namespace, "cmds": op.cmds, "arguments": op.arguments,
            "limits": limits, "pvc": op.volumes[0].persistent_volume_claim.claim_name,
            "mount": op.volume_mounts[0].mount_path, "type": type(op).__name__}

report = {
    "train_by_variable": m.resolve_runner("train", variables.get, env),
    "ingest_by_variable": m.resolve_runner("ingest", variables.get, env),
    "ingest_by_env": m.resolve_runner("ingest", lambda key: None, env),
    "nothing_set": m.resolve_runner("train", lambda key: None, {}),
    "bad_runner": attempt(lambda: m.resolve_runner("train", lambda key: '{"train": "slurm"}', {})),
    "bad_json": attempt(lambda: m.resolve_runner("train", lambda key: "{train", {})),
    "bad_pod_key": attempt(lambda: m.resolve_pod_settings(lambda key: '{"gpus": 2}', {})),
    "train_pod": describe(m.stage_pod_operator("train", settings, pod, "train", "--candidate", "paper_cnn")),
    "validate_pod": describe(m.stage_pod_operator("validate", settings, pod, "validate")),
}
print("REPORT:" + json.dumps(report))
"""


def test_runner_and_pod_come_from_configuration(tmp_path: Path, monkeypatch) -> None:
    isolate_airflow(monkeypatch, tmp_path / "airflow_home", f"sqlite:///{tmp_path / 'airflow.db'}")
    report = run_python(RUNNERS_SCRIPT, str(DAG_FILE), cwd=tmp_path)

    assert (report["train_by_variable"], report["ingest_by_variable"]) == ("kubernetes", "local")
    assert (report["ingest_by_env"], report["nothing_set"]) == ("kubernetes", "local")
    assert report["bad_runner"]["raised"] == "AirflowFailException" and "slurm" in report["bad_runner"]["message"]
    assert report["bad_json"]["raised"] == "AirflowFailException" and "not valid JSON" in report["bad_json"]["message"]
    assert "gpus" in report["bad_pod_key"]["message"]

    train = report["train_pod"]
    assert train["type"] == "KubernetesPodOperator" and train["namespace"] == "ml"
    assert train["image"] == "reg/kct-gpu:2" and train["limits"] == {"nvidia.com/gpu": "1"}
    assert train["arguments"] == ["/workspace", "components.train", "--params", "/workspace/conf/params.yaml",
                                  "--candidate", "paper_cnn"]
    assert (train["pvc"], train["mount"]) == ("kidney-ct-workspace", "/workspace")
    validate = report["validate_pod"]
    assert validate["image"] == "reg/kct-cpu:2" and validate["limits"] is None
    assert "components.validate" in validate["arguments"]
