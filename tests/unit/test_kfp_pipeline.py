"""The Kubeflow Pipelines v2 definition compiles offline and mirrors dvc.yaml's stage graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.common.stage_graph import ancestors, load_stage_graph
from pipelines.kidney_ct import NO_DATA, ClusterSettings, compile_pipeline, main, params_hash

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    settings = ClusterSettings(cpu_image="registry.local/kct-cpu:1", gpu_image="registry.local/kct-gpu:1",
                               candidates=("small", "wide"))
    compile_pipeline(settings, out, load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml"))
    pipeline_spec, platform_spec = yaml.safe_load_all(out.read_text())  # KFP writes two documents
    return {**pipeline_spec, **platform_spec}


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def executor(spec: dict, task: dict) -> dict:
    component = spec["components"][task["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]


def test_every_stage_runs_its_entry_point_in_its_image(compiled):
    for name, task in tasks(compiled).items():
        container = executor(compiled, task)
        stage = name.split("-")[0]
        assert f"components.{stage}" in " ".join(container["command"] + container["args"]), name
        assert container["image"] == ("registry.local/kct-gpu:1" if stage == "train" else "registry.local/kct-cpu:1")


def test_train_requests_a_gpu_per_candidate(compiled):
    trains = {name: task for name, task in tasks(compiled).items() if name.startswith("train")}
    assert len(trains) == 2
    for task in trains.values():
        accelerator = executor(compiled, task)["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
        assert any(arg in ("small", "wide") for arg in executor(compiled, task)["args"])


def test_cache_is_keyed_on_the_ingested_data_version_and_the_params_hash(compiled):
    for name, task in tasks(compiled).items():
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        stage = name.split("-")[0]
        assert cached == (stage not in ("generate", "ingest", "register", "package")), name
        if cached:
            inputs = task["inputs"]["parameters"]
            if stage == "backbone":  # converts pinned weights, reads no data: keyed on the params only
                assert inputs["data_version"]["runtimeValue"]["constant"] == NO_DATA
                continue
            assert inputs["data_version"]["taskOutputParameter"] == {"outputParameterKey": "data_version",
                                                                     "producerTask": "ingest"}
            assert inputs["params_hash"]["componentInputParameter"] == "params_hash"


def test_task_order_matches_dvc_stage_graph(compiled):
    graph: dict[str, set[str]] = {}
    for name, task in tasks(compiled).items():
        graph.setdefault(name.split("-")[0], set()).update(dep.split("-")[0] for dep in task.get("dependentTasks", []))
    for stage in graph:
        graph[stage].discard(stage)
    assert ancestors(graph) == ancestors(load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml"))


def test_every_task_mounts_the_workspace_volume(compiled):
    executors = compiled["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == len({executor_label(compiled, t) for t in tasks(compiled).values()})
    for config in executors.values():
        assert config["pvcMount"][0]["mountPath"] == "/workspace"


def executor_label(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_params_hash_ignores_formatting_but_not_values(tmp_path, capsys):
    a, b, c = (tmp_path / name for name in ("a.yaml", "b.yaml", "c.yaml"))
    a.write_text("train: {seed: 1}\nclasses: [x, y]\n")
    b.write_text("# comment\nclasses:\n  - x\n  - y\ntrain:\n  seed: 1\n")
    c.write_text("train: {seed: 2}\nclasses: [x, y]\n")
    assert params_hash(a) == params_hash(b) != params_hash(c)
    assert main(["--params", str(a), "--print-params-hash"]) == 0
    assert capsys.readouterr().out.strip() == params_hash(a)
