"""CLI: python -m components.preprocess — read the validated table, write arrays and the split."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.imaging import ImageDecodeError
from components.common.params import Params
from components.common.storage import StorageError, open_store
from components.preprocess.core import build_prepared, decode_all, rows_from_table


def audit_split(split: pd.DataFrame, result_path: Path) -> None:
    """Great Expectations on the split manifest; a group or duplicate on two sides stops the stage."""
    from components.preprocess.split_check import check_split, failures

    outcome = check_split(split)
    problems = failures(outcome, split)
    write_json(result_path, {"success": outcome.success, "failures": problems, "statistics": outcome.statistics})
    if problems:
        raise StageError("the split leaks: " + "; ".join(problems))


def run(params: Params, args: argparse.Namespace) -> None:
    table_path = Path(params.paths.validation) / "table.csv"
    if not table_path.is_file():
        raise StageError(f"{table_path} not found: run the validate stage first")
    records = pd.read_csv(table_path, dtype={"group": str, "sha256": str})
    rows = rows_from_table(records.to_dict("records"))
    if not rows:
        raise StageError(f"{table_path} has no images")
    store = open_store(params.paths.store, params.storage)
    try:
        images, thumbs = decode_all(rows, store.get, params.preprocess)
        prepared = build_prepared(rows, images, thumbs, params.classes, params.preprocess)
    except (ImageDecodeError, StorageError, ValueError) as exc:
        raise StageError(str(exc)) from None
    out = Path(params.paths.prepared)
    (out / "arrays").mkdir(parents=True, exist_ok=True)
    for split, (x, y) in prepared.arrays.items():
        np.save(out / "arrays" / f"X_{split}.npy", x)
        np.save(out / "arrays" / f"y_{split}.npy", y)
    write_json(out / "arrays" / "stats.json", {k: prepared.summary[k] for k in ("train_pixel_mean", "train_pixel_variance")})
    extra = ["key", "sha256"] + (["series"] if "series" in records else [])  # series: the study verdict's unit
    split = pd.DataFrame(prepared.table).merge(records[extra], on="key", how="left")
    split.to_csv(out / "split.csv", index=False)
    audit_split(split, out / "split_check.json")
    write_json(out / "preprocess.json", prepared.summary)
    s = prepared.summary
    log.info("%d images in %d groups (%s): %s", s["images"], s["groups"], s["group_source"], s["per_split"])


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Window, resize, group and split the validated images into model-ready arrays.")
    return run_stage("preprocess", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
