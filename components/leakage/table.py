"""CLI: python -m components.leakage.table — every grouped-CV trial logged to MLflow, as one Markdown table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.common.params import ParamsError, load_params, parse_params
from components.common.tables import text_table
from components.common.tracking import configure_mlflow
from components.leakage.core import VARIANTS, knob_defaults, variant_label
from components.lib.folds import recipe_params
from components.lib.profile_files import SEARCH, profile_overlay, read_yaml, search_profile, search_trials
from components.lib.profiles import ProfileError, merge

SCORING_ONLY = {"leakage.tta", "leakage.ensemble"}  # add rows beside the first model's: not what a trial trains


def _pm(metrics: dict, name: str) -> str:
    mean, std = metrics.get(f"cv_{name}_mean"), metrics.get(f"cv_{name}_std")
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"


def trial_rows(runs: list[dict], classes: list[str]) -> list[list[str]]:
    """Rows of (trial, candidate, macro-F1, accuracy, recall per class, series macro-F1, series accuracy, time,
    machine), oldest first; the series columns score one verdict per scan series (n/a for trials run before).

    A trial that also scored test-time augmentation or an ensemble gets a row per variant, e.g. "<trial> + TTA
    (<views>)" or "<trial> + ensemble of 3"; the time is the whole CV's (every member trained) on each row.
    """
    rows = []
    for run in sorted(runs, key=lambda r: r["start_time"]):
        m, tags = run["metrics"], run["tags"]
        folds = int(float(run["params"].get("leakage.cv_folds", 5)))
        minutes = m.get("cv_seconds", 0.0) / 60
        timing = [f"{minutes:.0f} min ({minutes / max(folds, 1):.1f}/fold)", tags.get("machine", "?")]
        variants = [("", run["name"])]
        for variant in VARIANTS:
            if f"cv_{variant}_macro_f1_mean" in m:
                label = variant_label(variant, run["params"].get("leakage.tta", "?"),
                                      run["params"].get("leakage.ensemble", "?"))
                variants.append((f"{variant}_", f"{run['name']} + {label}"))
        for prefix, name in variants:
            rows.append([name, tags.get("candidate", "?"), _pm(m, f"{prefix}macro_f1"), _pm(m, f"{prefix}accuracy"),
                         *[_pm(m, f"{prefix}recall_{c}") for c in classes], _pm(m, f"{prefix}series_macro_f1"),
                         _pm(m, f"{prefix}series_accuracy"), *timing])
    return rows


def recipe_drift(logged: dict[str, str], current: dict[str, object], defaults: dict[str, object]) -> list[str]:
    """"knob: then -> now" for each knob a trial would now train with a different value than it was measured.

    A knob missing from the logged run did not exist yet: the run trained with its default (new knobs default
    to the behaviour from before them).
    """
    changes = []
    for key, now in sorted(current.items()):
        if key in SCORING_ONLY:
            continue
        then = logged.get(key, str(defaults.get(key)))
        if then != str(now):
            changes.append(f"{key}: {then} -> {now}")
    return changes


def markdown(rows: list[list[str]], classes: list[str], drift: dict[str, list[str]] | None = None) -> str:
    """A GitHub Markdown table of the trial rows; trials whose recipe changed since are starred and listed."""
    drift = {name: changes for name, changes in (drift or {}).items() if changes}
    header = ["trial", "candidate", "macro-F1", "accuracy", *[f"recall {c}" for c in classes], "series macro-F1",
              "series accuracy", "CV time", "machine"]
    trials = [row[0].split(" + ")[0] for row in rows]  # "t06 + TTA (..)" is trial t06's second row
    lines = [text_table(header, [[row[0] + ("*" if trial in drift else ""), *row[1:]] for trial, row in zip(trials, rows)])]
    if drift:
        lines += ["", f"\\* measured with another recipe than the one {SEARCH} and the profile it names now "
                  "give: re-run the trial (`make search TRIALS=...`) or pin the knob in its overlay:"]
        lines += [f"- {name}: {'; '.join(drift[name])}" for name in dict.fromkeys(trials) if name in drift]
    return "\n".join(lines)


def current_recipes(params_path: Path) -> dict[str, dict[str, object]]:
    """Trial name -> the recipe `make search` would now train for it (the params file + profile + trial)."""
    base, profile = read_yaml(params_path), profile_overlay(search_profile())
    recipes = {}
    for name, overlay in search_trials().items():
        params = parse_params(merge(base, profile, overlay))
        recipes[name] = recipe_params(params, params.leakage.candidate)
    return recipes


def trial_drift(runs: list[dict], params_path: Path) -> dict[str, list[str]]:
    """Run name -> recipe changes, for the runs named after a trial of profiles/search.yaml."""
    try:
        recipes = current_recipes(params_path)
    except (ProfileError, ParamsError) as exc:
        print(f"cv-table: cannot check the trials' recipes ({exc})", file=sys.stderr)
        return {}
    defaults = knob_defaults()
    return {run["name"]: recipe_drift(run["params"], recipes[run["name"]], defaults)
            for run in runs if run["name"] in recipes}


def fetch_runs(experiment_id: str) -> list[dict]:
    """Grouped-CV runs of the experiment as plain dicts."""
    from mlflow import MlflowClient

    found = MlflowClient().search_runs([experiment_id], filter_string="tags.kind = 'grouped_cv'", max_results=1000)
    return [{"name": r.info.run_name, "start_time": r.info.start_time, "metrics": r.data.metrics,
             "params": r.data.params, "tags": r.data.tags} for r in found if r.info.status == "FINISHED"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print every grouped-CV trial (leakage stage runs logged to "
                                     "MLflow) as a Markdown table: macro-F1 and per-class recall mean ± std over "
                                     "folds, the study-level (per scan series) macro-F1 and accuracy, CV time and "
                                     "machine. Trials of profiles/search.yaml whose recipe has "
                                     "changed since they ran (a knob of the profile or the params file) are starred "
                                     "and the changed knobs listed.")
    parser.add_argument("--params", default="params.yaml", help="params file naming the MLflow store")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        print(f"cv-table: {exc}", file=sys.stderr)
        return 2
    runs = fetch_runs(configure_mlflow(params.mlflow))
    rows = trial_rows(runs, params.classes)
    if not rows:
        print("no grouped-CV trials in MLflow yet: run `make search` or `make real-data-cv`", file=sys.stderr)
        return 1
    text = markdown(rows, params.classes, trial_drift(runs, Path(args.params)))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
