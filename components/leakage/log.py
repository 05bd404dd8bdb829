"""CLI: python -m components.leakage.log — log a grouped CV scored elsewhere (its leakage.json) to MLflow.

For a CV run on a machine that cannot reach the tracking store (a GPU node, say): run the leakage stage
there with the same params file, bring `leakage.json` back, and log it here as the trial it was.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.common.cli import StageError, read_json
from components.common.params import ParamsError, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Log the grouped CV of a leakage.json (written by the leakage "
                                     "stage elsewhere) as one MLflow run, exactly as the stage logs it, so "
                                     "`make cv-table` lists it.")
    parser.add_argument("leakage_json", type=Path, help="the leakage.json the stage wrote")
    parser.add_argument("--params", default="params.yaml", help="the params file the CV ran with")
    parser.add_argument("--trial", required=True, help="the run's name, e.g. the search trial it scored")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        report = read_json(args.leakage_json)
    except (ParamsError, StageError, ValueError) as exc:
        print(f"leakage.log: {exc}", file=sys.stderr)
        return 2
    cv, name = report.get("grouped_cv"), report.get("candidate")
    if not cv or name not in params.train.candidates:
        print(f"leakage.log: {args.leakage_json} holds no grouped CV of a candidate of {args.params} "
              f"(candidate {name!r})", file=sys.stderr)
        return 2
    if cv["folds"] != params.leakage.cv_folds:
        print(f"leakage.log: {args.leakage_json} holds a {cv['folds']}-fold CV but {args.params} asks for "
              f"leakage.cv_folds {params.leakage.cv_folds}: log it with the params file it ran with", file=sys.stderr)
        return 2
    from components.leakage.__main__ import log_cv_to_mlflow

    log_cv_to_mlflow(params, name, cv, trial=args.trial)
    print(f"logged {args.trial}: grouped {cv['folds']}-fold CV of {name}, macro-F1 {cv['macro_f1']['mean']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
