"""One container shape per stage for both cluster orchestrators: the Airflow DAG's pods and the KFP pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.common.cluster import cluster_settings, stage_arguments, stage_container
from components.common.params import ClusterParams, load_params
from components.common.stage_graph import load_stage_graph
from pipelines.kidney_ct import compile_pipeline
from tests.pipeline.test_dag_runners import STAGES, parse_with

REPO = Path(__file__).resolve().parents[2]
CPU, GPU = "reg/kct-cpu@sha256:" + "a" * 64, "reg/kct-gpu@sha256:" + "b" * 64
# Not the defaults, so that an orchestrator that ignored a setting would show it.
CLUSTER = ClusterParams(namespace="ml", cpu_image=CPU, gpu_image=GPU, workspace_pvc="ws-claim", workspace="/ws",
                        config_map="cfg", secret="keys", train_gpus=2, train_cpu="3", train_memory="12Gi")


def test_stage_arguments_are_the_cmd_dvc_yaml_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGES)
    for name, stage in stages.items():
        cmd = stage.get("cmd") or stage["do"]["cmd"]  # train is a foreach over the candidates
        candidate = "${key}" if "foreach" in stage else None
        assert cmd == " ".join(["python", "-m", *stage_arguments(name, candidate=candidate)]), name
    assert stage_arguments("train", "p.yaml", "wide") == ["components.train", "--params", "p.yaml", "--candidate", "wide"]


def test_only_train_gets_the_gpu_image_gpus_and_requests():
    train, validate = (stage_container(CLUSTER, stage, ["m"]) for stage in ("train", "validate"))
    assert (train.image, train.limits, dict(train.requests)) == (GPU, {"nvidia.com/gpu": "2"},
                                                                 {"cpu": "3", "memory": "12Gi"})
    assert (validate.image, validate.limits, dict(validate.requests)) == (CPU, {}, {})
    assert validate.args == ("/ws", "m") and validate.command[-1] == "validate"
    no_gpu = stage_container(CLUSTER.model_copy(update={"train_gpus": 0}), "train", [])
    assert no_gpu.limits == {}


def test_cluster_settings_name_the_bad_key_and_refuse_an_image_by_tag():
    with pytest.raises(ValueError, match=r"env X: invalid cluster settings:\n  namspace: Extra inputs"):
        cluster_settings({"namspace": "ml", "cpu_image": CPU, "gpu_image": GPU}, "env X")
    with pytest.raises(ValueError, match=r"env X: cpu_image 'reg/kct-cpu:latest' is not pinned by digest"):
        cluster_settings({"cpu_image": "reg/kct-cpu:latest", "gpu_image": GPU}, "env X")
    assert cluster_settings(json.loads(CLUSTER.model_dump_json()), "env X") == CLUSTER


def test_repo_cluster_params_name_the_objects_infra_k8s_creates():
    cluster = load_params(REPO / "params.yaml").cluster
    created = {(doc["kind"], doc["metadata"]["name"]) for path in (REPO / "infra" / "k8s").glob("*.yaml")
               for doc in yaml.safe_load_all(path.read_text()) if doc and "metadata" in doc}
    assert {("Namespace", cluster.namespace), ("PersistentVolumeClaim", cluster.workspace_pvc),
            ("ConfigMap", cluster.config_map), ("Secret", cluster.secret)} <= created


def test_the_helm_values_give_the_dag_valid_cluster_settings():
    values = yaml.safe_load((REPO / "infra" / "helm" / "airflow-values.yaml").read_text())
    env = {item["name"]: item["value"] for item in values["env"]}
    cluster = cluster_settings(json.loads(env["KIDNEY_CT_KUBERNETES"]), "helm values")
    assert cluster.namespace == load_params(REPO / "params.yaml").cluster.namespace


def kfp_containers(out: Path) -> dict[str, dict]:
    """Stage -> its container and Kubernetes config, as the compiled KFP package has them."""
    compile_pipeline(CLUSTER, out, load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml"), ["tiny"])
    spec, platform = yaml.safe_load_all(out.read_text())
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    found = {}
    for name, task in spec["root"]["dag"]["tasks"].items():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        found[name] = {**spec["deploymentSpec"]["executors"][label]["container"], **kubernetes[label]}
    return found


def test_the_dag_and_the_kfp_pipeline_run_each_stage_in_the_same_container(tmp_path, monkeypatch):
    env = {"KIDNEY_CT_RUNNERS": '{"default": "kubernetes"}', "KIDNEY_CT_KUBERNETES": CLUSTER.model_dump_json()}
    report = parse_with(tmp_path, monkeypatch, env)
    assert report["import_errors"] == {}
    pods, kfp = report["shapes"], kfp_containers(tmp_path / "pipeline.yaml")
    for stage in STAGES:
        expected = stage_container(CLUSTER, stage, [])
        pod, step = pods[stage], kfp[stage]
        assert pod["image"] == step["image"] == expected.image, stage
        assert pod["cmds"] == step["command"] == list(expected.command), stage
        assert (pod["mounts"], pod["claims"]) == ([CLUSTER.workspace], [CLUSTER.workspace_pvc]), stage
        assert [(m["mountPath"], m["constant"]) for m in step["pvcMount"]] == [(CLUSTER.workspace, CLUSTER.workspace_pvc)]
        assert pod["env_from"] == [step["configMapAsEnv"][0]["configMapName"], step["secretAsEnv"][0]["secretName"]] \
            == [CLUSTER.config_map, CLUSTER.secret]
        assert (pod["limits"] or {}) == expected.limits and (pod["requests"] or {}) == dict(expected.requests), stage
        gpus = step.get("resources", {}).get("accelerator", {}).get("resourceCount")
        assert gpus == (str(expected.gpus) if expected.gpus else None), stage
        if stage == "train":  # mapped over the candidates read at run time: its arguments are an XCom map
            assert (step["resources"]["resourceCpuRequest"], step["resources"]["resourceMemoryRequest"]) == ("3", "12Gi")
            continue
        # the same entry point: the pod's tracked run makes DVC run dvc.yaml's cmd (stage_arguments),
        # the KFP step runs it with the run's params file
        assert pod["arguments"][:3] == [CLUSTER.workspace, "components.common.dvc_run", stage], stage
        module = [CLUSTER.workspace, *stage_arguments(stage, "{{$.inputs.parameters['params_file']}}")]
        assert step["args"][:len(module)] == module, stage  # ingest adds --data-version-out
    assert pods["validate"]["namespace"] == "ml"
