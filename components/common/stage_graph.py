"""Read the stage graph out of dvc.yaml: which stage consumes which stage's outputs.

Pure functions over the parsed YAML mappings (plus one small loader at the edge), so the
orchestrators (dags/, pipelines/) can be checked against the one graph DVC runs.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

_TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


class StageGraphError(ValueError):
    """dvc.yaml cannot be turned into a graph; the message names the stage and the problem."""


def lookup(context: Mapping[str, Any], dotted: str) -> Any:
    """Value at `a.b.c` in nested mappings; StageGraphError when a key is missing."""
    value: Any = context
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise StageGraphError(f"${{{dotted}}} is not defined (no `{part}`)")
        value = value[part]
    return value


def resolve(text: str, context: Mapping[str, Any]) -> str:
    """Substitute every `${dotted.name}` in `text` from `context`."""
    return _TEMPLATE.sub(lambda match: str(lookup(context, match.group(1))), text)


def _entry_paths(entries: Iterable[Any] | None) -> list[str]:
    """Paths of a deps/outs/metrics/plots list whose items are `path` or `{path: options}`."""
    paths: list[str] = []
    for entry in entries or []:
        paths.extend([entry] if isinstance(entry, str) else list(entry))
    return paths


def _foreach_items(stage: str, spec: Mapping[str, Any], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The template contexts of a stage: one per foreach item (`key`/`item`), or one plain."""
    if "foreach" not in spec:
        return [{}]
    items = spec["foreach"]
    if isinstance(items, str):
        match = _TEMPLATE.fullmatch(items.strip())
        if not match:
            raise StageGraphError(f"stage {stage}: foreach must be a list, a mapping or ${{...}}")
        items = lookup(params, match.group(1))
    if isinstance(items, Mapping):
        return [{"key": key, "item": value} for key, value in items.items()]
    if isinstance(items, list):
        return [{"key": index, "item": value} for index, value in enumerate(items)]
    raise StageGraphError(f"stage {stage}: foreach resolved to {type(items).__name__}, not a list/mapping")


def stage_io(dvc: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, tuple[set[str], set[str]]]:
    """stage -> (deps, outs) with templates resolved; a foreach stage is one node over all its items."""
    stages = dvc.get("stages")
    if not isinstance(stages, Mapping) or not stages:
        raise StageGraphError("dvc.yaml has no `stages` mapping")
    io: dict[str, tuple[set[str], set[str]]] = {}
    for name, spec in stages.items():
        body = spec.get("do", spec)
        deps: set[str] = set()
        outs: set[str] = set()
        for item_context in _foreach_items(name, spec, params):
            context = {**params, **item_context}
            deps |= {_normalise(resolve(p, context)) for p in _entry_paths(body.get("deps"))}
            for kind in ("outs", "metrics", "plots"):
                outs |= {_normalise(resolve(p, context)) for p in _entry_paths(body.get(kind))}
        io[name] = (deps, outs)
    return io


def stage_param_keys(dvc: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, set[str]]:
    """stage -> the dotted params keys it declares (`params:`, templates resolved; a foreach stage: every item's).

    A `{file: [keys]}` entry counts its keys (a stage reading another params file is keyed on the same names).
    """
    keys: dict[str, set[str]] = {}
    for name, spec in dvc["stages"].items():
        body = spec.get("do", spec)
        found: set[str] = set()
        for item_context in _foreach_items(name, spec, params):
            context = {**params, **item_context}
            for entry in body.get("params") or []:
                listed = [entry] if isinstance(entry, str) else [k for ks in entry.values() for k in ks or []]
                found |= {resolve(key, context) for key in listed}
        keys[name] = found
    return keys


def _normalise(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/"))


def _overlaps(dep: str, out: str) -> bool:
    """DVC links a dep to an out when one path is the other or lies inside it."""
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def upstream_stages(dvc: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, set[str]]:
    """stage -> the stages whose outputs it depends on directly."""
    io = stage_io(dvc, params)
    return {
        stage: {
            other
            for other, (_, outs) in io.items()
            if other != stage and any(_overlaps(dep, out) for dep in deps for out in outs)
        }
        for stage, (deps, _) in io.items()
    }


def ancestors(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """stage -> every stage that must run before it (transitive closure of `graph`)."""
    closure: dict[str, set[str]] = {}

    def visit(node: str, trail: tuple[str, ...]) -> set[str]:
        if node in trail:
            raise StageGraphError("cycle in stage graph: " + " -> ".join((*trail, node)))
        if node not in closure:
            found: set[str] = set()
            for parent in graph.get(node, ()):
                found |= {parent} | visit(parent, (*trail, node))
            closure[node] = found
        return closure[node]

    for node in graph:
        visit(node, ())
    return closure


def load_stage_graph(dvc_path: str | Path = "dvc.yaml", params_path: str | Path = "params.yaml") -> dict[str, set[str]]:
    """Read dvc.yaml and the params file it templates from; return stage -> direct upstream stages."""
    dvc = yaml.safe_load(Path(dvc_path).read_text()) or {}
    params = yaml.safe_load(Path(params_path).read_text()) or {}
    return upstream_stages(dvc, params)


def topological(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Stages so that each comes after all of its upstream stages (ties by name)."""
    before = ancestors(graph)
    return sorted(graph, key=lambda stage: (len(before[stage]), stage))


def direct_upstream(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """The transitive reduction: stage -> the upstream stages not already reached through another upstream one
    (same order of execution, fewer edges: `report` waits for `evaluate`, which waits for `leakage`)."""
    before = ancestors(graph)
    return {stage: {up for up in parents if not any(up in before[other] for other in parents if other != up)}
            for stage, parents in ((stage, set(parents)) for stage, parents in graph.items())}


PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or image folder) holding components/ and dvc.yaml


def project_stage_graph(root: str | Path = PROJECT_ROOT) -> dict[str, set[str]]:
    """The stage graph of the code's own dvc.yaml templated by the params.yaml beside it (the Airflow DAG reads
    it when parsed: the node set and the links do not depend on a run's params file, only its values do)."""
    root = Path(root)
    return load_stage_graph(root / "dvc.yaml", root / "params.yaml")
