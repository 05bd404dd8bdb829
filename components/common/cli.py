"""The thin edge every stage CLI shares: logging, params loading, clean failures."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.common.console import quiet_runtime
from components.common.params import Params, ParamsError, load_params

log = logging.getLogger("kidney_ct")


class StageError(Exception):
    """A stage refused its input or its verdict; the message is for a person, not a traceback."""


def stage_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the --params option every stage takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def run_stage(name: str, body: Callable[[Params, argparse.Namespace], Any], parser: argparse.ArgumentParser,
              argv: list[str] | None = None) -> int:
    """Parse args, load params once, run `body` between a `started` and a `done in` line; print known failures
    without a traceback."""
    quiet_runtime()  # before the body imports TensorFlow
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(message)s", datefmt="%H:%M:%S")
    args = parser.parse_args(argv)
    log.info("started")
    began = time.perf_counter()
    try:
        params = load_params(args.params)
        body(params, args)
    except (ParamsError, StageError) as exc:
        log.error("failed after %.1f s: %s", time.perf_counter() - began, exc)
        return 2
    except Exception as exc:
        log.error("failed after %.1f s: %s (traceback below)", time.perf_counter() - began, type(exc).__name__)
        raise
    log.info("done in %.1f s", time.perf_counter() - began)
    return 0


def worker_processes(limit: int = 8) -> int:
    """Processes a stage may fan independent per-file work out to: every core, at most `limit`."""
    return max(1, min(os.cpu_count() or 1, limit))


def write_json(path: str | Path, payload: Any) -> None:
    """Write pretty, key-sorted JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """Read JSON, failing with a StageError that names the missing upstream output."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path} not found: run the stage that writes it first")
    return json.loads(path.read_text())
