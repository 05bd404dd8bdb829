"""The dvc.yaml -> stage graph reader, on tiny in-memory pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.common.stage_graph import (
    StageGraphError,
    ancestors,
    direct_upstream,
    load_stage_graph,
    project_stage_graph,
    resolve,
    stage_io,
    topological,
    upstream_stages,
)

PARAMS = {
    "paths": {"raw": "data/raw", "clean": "data/clean", "models": "models", "report": "reports/eval"},
    "train": {"candidates": {"small": {"units": 8}, "large": {"units": 64}}},
}

PIPELINE = {
    "stages": {
        "fetch": {"cmd": "fetch", "outs": ["${paths.raw}"]},
        "clean": {
            "cmd": "clean",
            "deps": ["${paths.raw}/images", "src/clean"],  # a file inside fetch's output folder
            "outs": ["${paths.clean}/table.csv"],
            "metrics": [{"${paths.clean}/stats.json": {"cache": False}}],
        },
        "train": {
            "foreach": "${train.candidates}",
            "do": {"cmd": "train --candidate ${key}", "deps": ["${paths.clean}/table.csv"],
                   "outs": ["${paths.models}/${key}"]},
        },
        "evaluate": {
            "cmd": "evaluate",
            "deps": ["${paths.models}", "${paths.clean}/stats.json"],  # folder holding train's outputs
            "plots": [{"${paths.report}/plots": {"cache": False}}],
        },
    }
}


def test_resolve_substitutes_nested_params() -> None:
    assert resolve("${paths.raw}/x/${ paths.models }", PARAMS) == "data/raw/x/models"


def test_resolve_names_the_missing_key() -> None:
    with pytest.raises(StageGraphError, match=r"paths\.nope"):
        resolve("${paths.nope}/x", PARAMS)


def test_foreach_stage_is_one_node_over_every_item() -> None:
    deps, outs = stage_io(PIPELINE, PARAMS)["train"]
    assert outs == {"models/small", "models/large"}
    assert deps == {"data/clean/table.csv"}


def test_metrics_and_plots_count_as_outputs() -> None:
    assert "data/clean/stats.json" in stage_io(PIPELINE, PARAMS)["clean"][1]
    assert "reports/eval/plots" in stage_io(PIPELINE, PARAMS)["evaluate"][1]


def test_upstream_links_deps_to_outputs_including_nested_paths() -> None:
    assert upstream_stages(PIPELINE, PARAMS) == {
        "fetch": set(),
        "clean": {"fetch"},
        "train": {"clean"},
        "evaluate": {"train", "clean"},
    }


def test_foreach_over_a_list_uses_item_values() -> None:
    dvc = {"stages": {"make": {"foreach": ["a", "b"], "do": {"cmd": "x", "outs": ["out/${item}"]}},
                      "use": {"cmd": "y", "deps": ["out/b"]}}}
    assert upstream_stages(dvc, {}) == {"make": set(), "use": {"make"}}


def test_ancestors_is_the_transitive_closure() -> None:
    closure = ancestors(upstream_stages(PIPELINE, PARAMS))
    assert closure["evaluate"] == {"fetch", "clean", "train"}
    assert closure["fetch"] == set()


def test_cycle_is_reported_not_recursed_forever() -> None:
    with pytest.raises(StageGraphError, match="cycle"):
        ancestors({"a": {"b"}, "b": {"a"}})


def test_missing_stages_block_is_rejected() -> None:
    with pytest.raises(StageGraphError, match="no `stages`"):
        upstream_stages({}, PARAMS)


def test_foreach_that_is_not_a_collection_is_rejected() -> None:
    dvc = {"stages": {"t": {"foreach": "${paths.raw}", "do": {"cmd": "x"}}}}
    with pytest.raises(StageGraphError, match="stage t"):
        upstream_stages(dvc, PARAMS)


def test_load_stage_graph_reads_files(tmp_path) -> None:
    (tmp_path / "dvc.yaml").write_text("stages:\n  a: {cmd: x, outs: ['${paths.raw}']}\n"
                                       "  b: {cmd: y, deps: ['${paths.raw}/f']}\n")
    (tmp_path / "params.yaml").write_text("paths: {raw: data/raw}\n")
    assert load_stage_graph(tmp_path / "dvc.yaml", tmp_path / "params.yaml") == {"a": set(), "b": {"a"}}


def test_topological_puts_every_stage_after_its_upstream_stages() -> None:
    graph = upstream_stages(PIPELINE, PARAMS)
    order = topological(graph)
    assert order == ["fetch", "clean", "train", "evaluate"]
    assert all(order.index(up) < order.index(stage) for stage, ups in graph.items() for up in ups)


def test_direct_upstream_drops_links_reached_through_another_stage() -> None:
    graph = upstream_stages(PIPELINE, PARAMS)  # evaluate reads clean's stats.json and train's models
    reduced = direct_upstream(graph)
    assert reduced == {"fetch": set(), "clean": {"fetch"}, "train": {"clean"}, "evaluate": {"train"}}
    assert ancestors(reduced) == ancestors(graph)  # same order of execution


def test_the_project_graph_is_the_repo_dvc_yaml() -> None:
    root = Path(__file__).resolve().parents[2]
    assert project_stage_graph() == load_stage_graph(root / "dvc.yaml", root / "params.yaml")
    assert {"ingest", "train", "evaluate", "register"} <= set(project_stage_graph())


def test_stage_params_digest_changes_for_the_stages_a_param_feeds_and_no_other() -> None:
    from components.common.fingerprint import stage_params_digest
    from components.common.stage_graph import stage_param_keys

    dvc = {"stages": {
        "prep": {"cmd": "p", "deps": ["raw"], "params": ["prep", "shared.size"], "outs": ["ready"]},
        "fit": {"foreach": "${models}", "do": {"cmd": "f ${key}", "deps": ["ready"], "params": ["models.${key}"],
                                               "outs": ["model-${key}"]}},
        "show": {"cmd": "s", "deps": ["model-a"], "params": [{"other.yaml": ["look"]}], "outs": ["page"]},
    }}
    params = {"prep": {"n": 1}, "shared": {"size": 4, "unused": 0}, "models": {"a": {"lr": 1}, "b": {"lr": 2}},
              "look": "dark"}
    assert stage_param_keys(dvc, params) == {"prep": {"prep", "shared.size"}, "fit": {"models.a", "models.b"},
                                             "show": {"look"}}

    def digests(changed: dict) -> dict[str, str]:
        return {stage: stage_params_digest(dvc, changed, stage) for stage in dvc["stages"]}

    base = digests(params)
    assert digests({**params, "shared": {"size": 4, "unused": 9}}) == base  # read by no stage
    moved = digests({**params, "shared": {"size": 5, "unused": 0}})  # prep's: everything downstream of it too
    assert all(moved[stage] != base[stage] for stage in base)
    looked = digests({**params, "look": "light"})
    assert [stage for stage in base if looked[stage] != base[stage]] == ["show"]
    with pytest.raises(StageGraphError, match="no stage 'absent'"):
        stage_params_digest(dvc, params, "absent")
