"""Content fingerprints an orchestrator keys its cache on: the params digest of a params file.

`python -m components.common.fingerprint --params FILE --out PATH` writes the digest to PATH (the
Kubeflow pipeline's first step; its output is an input of every cached step, so KFP's cache key
changes exactly when the params do). The data version is ingest's (`--data-version-out`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml


def params_digest(params_file: str | Path) -> str:
    """sha256 of the params file's canonical YAML (formatting and comments do not count)."""
    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    return hashlib.sha256(yaml.safe_dump(raw, sort_keys=True).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="write the params digest here")
    args = parser.parse_args(argv)
    if not Path(args.params).is_file():
        print(f"fingerprint failed: params file {args.params} not found", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(params_digest(args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
