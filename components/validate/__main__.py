"""CLI of the validate stage: manifest + stored images -> table.csv, result.json, Data Docs.

Run as `python -m components.validate [--params params.yaml]`; exits non-zero when the suite fails.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.storage import StorageError, open_store
from components.lib.gx_suite import SuiteError, SuiteOutcome, load_declared_suite, run_suite
from components.validate.core import (
    MANIFEST_COLUMNS,
    SUITE_FILE,
    build_table,
    class_counts,
    expand_suite,
    share_wording,
    suite_parameters,
)
from components.validate.report import ShareLimits, summarise

REQUIRED_COLUMNS = ("key", "sha256", "label")


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The ingest manifest as rows; a StageError says what is wrong with a missing or bad file."""
    if not path.is_file():
        raise StageError(f"{path} not found: run the ingest stage first")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise StageError(f"{path} is not a readable CSV file ({exc})") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing:
        raise StageError(f"{path} lacks column(s) {', '.join(missing)}; expected {', '.join(MANIFEST_COLUMNS)}")
    if frame.empty:
        raise StageError(f"{path} lists no images: nothing to validate")
    return frame.to_dict("records")


def validate_table(table: pd.DataFrame, params: Params, docs_dir: Path | None) -> tuple[SuiteOutcome, list[dict]]:
    """Run the repo's suite, with thresholds from params, on the image table."""
    settings = params.validate_
    wording = share_wording(len(table), settings.min_class_share, settings.max_class_share)
    suite = expand_suite(load_declared_suite(SUITE_FILE), params.classes, wording)
    values = suite_parameters(params.classes, len(table), settings.min_width, settings.max_width,
                              settings.min_class_share, settings.max_class_share)
    outcome = run_suite(table, suite, values, docs_dir)
    limits = ShareLimits(settings.min_class_share, settings.max_class_share)
    return outcome, summarise(outcome.results, table, limits)


def result_payload(table: pd.DataFrame, params: Params, outcome: SuiteOutcome, entries: list[dict]) -> dict:
    """result.json: the verdict, the statistics and one entry per expectation."""
    counts = class_counts(table, params.classes)
    return {
        "success": outcome.success,
        "suite": outcome.suite_name,
        "statistics": {**outcome.statistics, "images": len(table),
                       "undecodable_images": int(table["decode_error"].notna().sum()),
                       "class_counts": counts,
                       "class_shares": {k: round(v / max(len(table), 1), 4) for k, v in counts.items()},
                       "formats": {str(k): int(v) for k, v in table["format"].value_counts().items()}},
        "failures": [entry["problem"] for entry in entries if not entry["success"]],
        "expectations": entries,
    }


def run(params: Params, args: argparse.Namespace) -> None:
    """Build the table, validate it, write the outputs; raise StageError when the suite fails."""
    out_dir = Path(params.paths.validation)
    rows = read_manifest(Path(params.paths.ingested) / "manifest.csv")
    try:
        store = open_store(params.paths.store, params.storage)
    except StorageError as exc:
        raise StageError(str(exc)) from None
    table = build_table(rows, store.get)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "table.csv", index=False)
    docs_dir = out_dir / "data_docs"
    shutil.rmtree(docs_dir, ignore_errors=True)  # only this run's pages, no stale ones
    try:
        outcome, entries = validate_table(table, params, docs_dir)
    except SuiteError as exc:
        raise StageError(str(exc)) from None
    payload = result_payload(table, params, outcome, entries)
    write_json(out_dir / "result.json", payload)
    log.info("%d images, %d/%d expectations met; data docs: %s", len(table),
             outcome.statistics.get("successful_expectations", 0),
             outcome.statistics.get("evaluated_expectations", 0), docs_dir / "index.html")
    if not outcome.success:
        failures = "\n".join(f"  - {problem}" for problem in payload["failures"])
        raise StageError(f"{len(payload['failures'])} expectation(s) not met "
                         f"(see {out_dir / 'result.json'}):\n{failures}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m components.validate`."""
    parser = stage_parser("Validate the ingested manifest and images with the Great Expectations suite.")
    return run_stage("validate", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
