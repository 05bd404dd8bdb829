"""CLI: python -m components.leakage.table — every grouped-CV trial logged to MLflow, as one Markdown table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.common.params import ParamsError, load_params
from components.common.tracking import configure_mlflow


def _pm(metrics: dict, name: str) -> str:
    mean, std = metrics.get(f"cv_{name}_mean"), metrics.get(f"cv_{name}_std")
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def trial_rows(runs: list[dict], classes: list[str]) -> list[list[str]]:
    """Rows of (trial, candidate, macro-F1, accuracy, recall per class, time, machine), oldest first.

    A trial that also scored test-time augmentation gets a second row, "<trial> + TTA (<views>)", for the same
    models (its time is the same CV: TTA only adds predictions).
    """
    rows = []
    for run in sorted(runs, key=lambda r: r["start_time"]):
        m, tags = run["metrics"], run["tags"]
        folds = int(float(run["params"].get("leakage.cv_folds", 5)))
        minutes = m.get("cv_seconds", 0.0) / 60
        timing = [f"{minutes:.0f} min ({minutes / max(folds, 1):.1f}/fold)", tags.get("machine", "?")]
        variants = [("", run["name"])]
        if "cv_tta_macro_f1_mean" in m:
            variants.append(("tta_", f"{run['name']} + TTA ({run['params'].get('leakage.tta', '?')})"))
        for prefix, name in variants:
            rows.append([name, tags.get("candidate", "?"), _pm(m, f"{prefix}macro_f1"), _pm(m, f"{prefix}accuracy"),
                         *[_pm(m, f"{prefix}recall_{c}") for c in classes], *timing])
    return rows


def markdown(rows: list[list[str]], classes: list[str]) -> str:
    """A GitHub Markdown table of the trial rows."""
    header = ["trial", "candidate", "macro-F1", "accuracy", *[f"recall {c}" for c in classes], "CV time", "machine"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fetch_runs(experiment_id: str) -> list[dict]:
    """Grouped-CV runs of the experiment as plain dicts."""
    from mlflow import MlflowClient

    found = MlflowClient().search_runs([experiment_id], filter_string="tags.kind = 'grouped_cv'", max_results=1000)
    return [{"name": r.info.run_name, "start_time": r.info.start_time, "metrics": r.data.metrics,
             "params": r.data.params, "tags": r.data.tags} for r in found if r.info.status == "FINISHED"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print every grouped-CV trial (leakage stage runs logged to "
                                     "MLflow) as a Markdown table: macro-F1 and per-class recall mean ± std over "
                                     "folds, CV time and machine.")
    parser.add_argument("--params", default="params.yaml", help="params file naming the MLflow store")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"cv-table: {exc}", file=sys.stderr)
        return 2
    rows = trial_rows(fetch_runs(configure_mlflow(params.mlflow)), params.classes)
    if not rows:
        print("no grouped-CV trials in MLflow yet: run `make search` or `make real-data-cv`", file=sys.stderr)
        return 1
    text = markdown(rows, params.classes)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
