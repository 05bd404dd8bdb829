"""Great Expectations check of a split manifest: no group and no exact duplicate on two sides."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.lib.gx_suite import SuiteOutcome, load_declared_suite, run_suite

SPLIT_SUITE_FILE = Path(__file__).parent / "expectations" / "split_manifest.json"


def audit_table(split: pd.DataFrame) -> pd.DataFrame:
    """The split manifest (key, group, split, sha256) plus, per row, how many splits its group and hash span."""
    table = split.copy()
    table["group_splits"] = table.groupby("group", dropna=False)["split"].transform("nunique")
    table["sha256_splits"] = table.groupby("sha256", dropna=False)["split"].transform("nunique")
    return table


def check_split(split: pd.DataFrame) -> SuiteOutcome:
    """Run the declared split suite on the manifest."""
    return run_suite(audit_table(split), load_declared_suite(SPLIT_SUITE_FILE), {})


def failures(outcome: SuiteOutcome, table: pd.DataFrame) -> list[str]:
    """Plain-words failures, naming the offending groups or hashes."""
    audit = audit_table(table)
    messages = []
    for result in outcome.results:
        if result["success"]:
            continue
        column = result["kwargs"].get("column")
        if column in ("group_splits", "sha256_splits"):
            key = column.removesuffix("_splits")
            bad = sorted(audit.loc[audit[column] > 1, key].astype(str).unique())
            messages.append(f"{len(bad)} {key} value(s) on more than one side of the split: {', '.join(bad[:5])}")
        else:
            messages.append(f"{result['type']} failed on {column}: {result['notes']}")
    return messages
