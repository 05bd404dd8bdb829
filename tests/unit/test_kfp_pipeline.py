"""The Kubeflow Pipelines v2 definition compiles offline and mirrors dvc.yaml's stage graph."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from components.common.fingerprint import stage_params_digest
from components.common.params import ClusterParams
from components.common.stage_graph import ancestors, load_stage_graph
from pipelines.kidney_ct import NO_DATA, compile_pipeline, main, params_hash

REPO = Path(__file__).resolve().parents[2]
CPU = "registry.local/kct-cpu@sha256:" + "c" * 64
GPU = "registry.local/kct-gpu@sha256:" + "9" * 64
HELPERS = {"fingerprint"}  # not a dvc.yaml stage: computes the params digest


def compile_spec(out: Path, cpu: str = CPU, gpu: str = GPU) -> dict:
    cluster = ClusterParams(cpu_image=cpu, gpu_image=gpu)
    compile_pipeline(cluster, out, load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml"), ("small", "wide"))
    pipeline_spec, platform_spec = yaml.safe_load_all(out.read_text())  # KFP writes two documents
    return {**pipeline_spec, **platform_spec}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    return compile_spec(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")


def tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def executor(spec: dict, task: dict) -> dict:
    component = spec["components"][task["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]


def test_every_stage_runs_its_entry_point_in_its_image(compiled):
    for name, task in tasks(compiled).items():
        container = executor(compiled, task)
        stage = name.split("-")[0]
        module = "components.common.fingerprint" if stage in HELPERS else f"components.{stage}"
        assert module in " ".join(container["command"] + container["args"]), name
        assert container["image"] == (GPU if stage == "train" else CPU)


def test_train_requests_a_gpu_per_candidate(compiled):
    trains = {name: task for name, task in tasks(compiled).items() if name.startswith("train")}
    assert len(trains) == 2
    for task in trains.values():
        accelerator = executor(compiled, task)["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
        assert any(arg in ("small", "wide") for arg in executor(compiled, task)["args"])


def fingerprinted_stage(spec: dict, task_name: str) -> str:
    """The stage a fingerprint task computes the params digest of (its constant `stage` input)."""
    assert task_name.startswith("fingerprint"), task_name
    return tasks(spec)[task_name]["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]


def test_cache_is_keyed_on_the_ingested_data_version_and_the_stage_params(compiled):
    for name, task in tasks(compiled).items():
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        stage = name.split("-")[0]
        assert cached == (stage not in ("fingerprint", "generate", "ingest", "register", "package")), name
        if cached:
            inputs = task["inputs"]["parameters"]
            digest = inputs["params_hash"]["taskOutputParameter"]
            assert digest["outputParameterKey"] == "params_digest"
            assert fingerprinted_stage(compiled, digest["producerTask"]) == stage  # its own params, not the file's
            if stage == "backbone":  # converts pinned weights, reads no data: keyed on the params only
                assert inputs["data_version"]["runtimeValue"]["constant"] == NO_DATA
                continue
            assert inputs["data_version"]["taskOutputParameter"] == {"outputParameterKey": "data_version",
                                                                     "producerTask": "ingest"}
    assert set(compiled["root"]["inputDefinitions"]["parameters"]) == {"params_file"}  # nothing caller-supplied


def test_task_order_matches_dvc_stage_graph(compiled):
    graph: dict[str, set[str]] = {}
    for name, task in tasks(compiled).items():
        if name.split("-")[0] in HELPERS:
            continue
        graph.setdefault(name.split("-")[0], set()).update(
            dep.split("-")[0] for dep in task.get("dependentTasks", []) if dep.split("-")[0] not in HELPERS)
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


def cache_keys(spec: dict, params_file: Path, manifest: bytes) -> dict[str, str]:
    """Each cached task's cache key as KFP's driver forms it: container spec + resolved input values.

    The runtime outputs are computed the way the steps compute them: each fingerprint task's stage digest of
    `params_file` and the sha256 of `manifest` (ingest's data version).
    """
    dvc, params = yaml.safe_load((REPO / "dvc.yaml").read_text()), yaml.safe_load(params_file.read_text())
    outputs = {("ingest", "data_version"): hashlib.sha256(manifest).hexdigest()}
    outputs |= {(name, "params_digest"): stage_params_digest(dvc, params, fingerprinted_stage(spec, name))
                for name in tasks(spec) if name.startswith("fingerprint")}
    keys = {}
    for name, task in tasks(spec).items():
        if not task.get("cachingOptions", {}).get("enableCache"):
            continue
        values = {}
        for key, source in task["inputs"]["parameters"].items():
            if "taskOutputParameter" in source:
                ref = source["taskOutputParameter"]
                values[key] = outputs[(ref["producerTask"], ref["outputParameterKey"])]
            elif "runtimeValue" in source:  # a constant (the backbone's data version: it reads no data)
                values[key] = source["runtimeValue"]["constant"]
            else:
                values[key] = source["componentInputParameter"]
        blob = json.dumps({"container": executor(spec, task), "inputs": values}, sort_keys=True)
        keys[name] = hashlib.sha256(blob.encode()).hexdigest()
    return keys


def params_with(tmp_path: Path, name: str, section: str, key: str, value) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw[section][key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cache_key_changes_when_params_data_or_code_change(compiled, tmp_path):
    params_a = params_with(tmp_path, "a.yaml", "train", "seed", 1)
    manifest_a, manifest_b = b"image,label\na.dcm,Cyst\n", b"image,label\na.dcm,Cyst\nb.dcm,Stone\n"
    base = cache_keys(compiled, params_a, manifest_a)
    reformatted = tmp_path / "a-reformatted.yaml"
    reformatted.write_text("# the same values\n" + yaml.safe_dump(yaml.safe_load(params_a.read_text()), indent=4))
    assert base and base == cache_keys(compiled, reformatted, manifest_a)  # same content, same key

    # A params change misses the cache for exactly the stages that read it or sit downstream of one that does.
    seed = cache_keys(compiled, params_with(tmp_path, "b.yaml", "train", "seed", 2), manifest_a)
    assert {name for name in base if seed[name] != base[name]} == {"train", "train-2", "leakage", "evaluate",
                                                                   "report"}
    resamples = cache_keys(compiled, params_with(tmp_path, "c.yaml", "report", "gradcam_per_class", 7), manifest_a)
    assert {name for name in base if resamples[name] != base[name]} == {"report"}

    new_code = compile_spec(tmp_path / "new-code.yaml", cpu="registry.local/kct-cpu@sha256:" + "d" * 64)
    data_changed = cache_keys(compiled, params_a, manifest_b)
    assert all(data_changed[name] != base[name] for name in base if name != "backbone"), "a data change must miss"
    assert data_changed["backbone"] == base["backbone"]  # the conversion reads no data: it stays cached
    code = cache_keys(new_code, params_a, manifest_a)
    assert all(code[name] != base[name] for name in base if not name.startswith("train"))  # CPU image
    assert all(code[name] == base[name] for name in base if name.startswith("train"))  # GPU image unchanged


def test_images_by_tag_are_refused_and_the_manifest_gives_digests(tmp_path, capsys):
    with pytest.raises(ValueError, match="not pinned by digest"):
        compile_spec(tmp_path / "tagged.yaml", cpu="registry.local/kct-cpu:latest")
    manifest = tmp_path / "images.json"
    manifest.write_text(json.dumps({"cpu": CPU, "gpu": GPU}))
    out = tmp_path / "from-manifest.yaml"
    assert main(["--params", str(REPO / "params.yaml"), "--dvc", str(REPO / "dvc.yaml"), "--images", str(manifest),
                 "--out", str(out)]) == 0
    assert CPU in out.read_text() and ":latest" not in out.read_text()
    assert main(["--images", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "not readable" in capsys.readouterr().out
