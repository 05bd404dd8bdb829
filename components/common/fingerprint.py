"""Content fingerprints an orchestrator keys its cache on: the params digest of a params file, whole or per stage.

`python -m components.common.fingerprint --params FILE --out PATH` writes the digest of the whole file;
with `--stage NAME`, the digest of the params that stage and every stage upstream of it declare in
dvc.yaml (`params:`), so a change reaches exactly the stages it feeds (what `dvc repro` reruns). The
Kubeflow pipeline runs one such step per stage; its output is an input of the stage's step, so KFP's
cache key changes exactly when that stage's params do. The data version is ingest's (`--data-version-out`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from components.common.stage_graph import PROJECT_ROOT, StageGraphError, ancestors, stage_param_keys, upstream_stages


def canonical_digest(value: Any) -> str:
    """sha256 of `value` as canonical YAML (key order, formatting and comments do not count)."""
    return hashlib.sha256(yaml.safe_dump(value, sort_keys=True).encode()).hexdigest()


def params_digest(params_file: str | Path) -> str:
    """sha256 of the params file's canonical YAML."""
    return canonical_digest(yaml.safe_load(Path(params_file).read_text()) or {})


def _value(params: Mapping[str, Any], dotted: str) -> Any:
    """The value at `a.b.c`, or None where a part is missing (DVC would refuse such a stage; the digest still says so)."""
    value: Any = params
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def selected_digest(params: Mapping[str, Any], keys: Iterable[str]) -> str:
    """sha256 of the named params' values (each key once, sorted)."""
    return canonical_digest({key: _value(params, key) for key in sorted(set(keys))})


def stage_params_digest(dvc: Mapping[str, Any], params: Mapping[str, Any], stage: str) -> str:
    """The digest of the params `stage` and its upstream stages declare: a change elsewhere leaves it as it is."""
    graph = upstream_stages(dvc, params)
    if stage not in graph:
        raise StageGraphError(f"dvc.yaml has no stage {stage!r} (stages: {', '.join(sorted(graph))})")
    declared = stage_param_keys(dvc, params)
    keys = [key for name in {stage} | ancestors(graph)[stage] for key in declared[name]]
    return selected_digest(params, [*keys, "paths"])  # where a stage reads and writes is part of what it does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--stage", help="only the params this stage and its upstream stages read (dvc.yaml)")
    parser.add_argument("--dvc", default=str(PROJECT_ROOT / "dvc.yaml"), help="the stage graph (default: the code's)")
    parser.add_argument("--out", required=True, help="write the params digest here")
    args = parser.parse_args(argv)
    if not Path(args.params).is_file():
        print(f"fingerprint failed: params file {args.params} not found", file=sys.stderr)
        return 2
    try:
        if args.stage:
            dvc = yaml.safe_load(Path(args.dvc).read_text()) or {}
            params = yaml.safe_load(Path(args.params).read_text()) or {}
            digest = stage_params_digest(dvc, params, args.stage)
        else:
            digest = params_digest(args.params)
    except (OSError, StageGraphError, yaml.YAMLError) as exc:
        print(f"fingerprint failed: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
