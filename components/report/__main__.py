"""CLI: python -m components.report — one self-contained HTML report of the run (also logged to MLflow)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.params import Params
from components.lib.predictions import (
    CV_PREDICTIONS,
    CV_SPLIT,
    INTERVALS,
    PROBABILITIES,
    load_probabilities,
    read_split,
)
from components.lib.prepared import SPLITS
from components.report import figures
from components.report.core import calibration_summary, pick_examples
from components.report.html import ci, figure, page


def load_model(params: Params, name: str):
    """The trained candidate, for Grad-CAM only (its probabilities come from evaluate)."""
    import keras

    path = Path(params.paths.models) / name / "model.keras"
    if not path.is_file():
        raise StageError(f"{path} not found: run `train --candidate {name}` first")
    return keras.saving.load_model(path)


def load_evaluation(params: Params) -> tuple[pd.DataFrame, dict]:
    """Evaluate's probabilities and CIs (paths.predictions), or a plain error naming the stage to run."""
    folder = Path(params.paths.predictions)
    if not (folder / PROBABILITIES).is_file() or not (folder / INTERVALS).is_file():
        raise StageError(f"{folder} has no {PROBABILITIES} / {INTERVALS}: run the evaluate stage first")
    return load_probabilities(folder), read_json(folder / INTERVALS)


def saved_analysis(params: Params, name: str, probabilities: pd.DataFrame, intervals: dict,
                   y_test: np.ndarray) -> tuple[np.ndarray, dict]:
    """One candidate's saved test probabilities, evaluate's CIs and the calibration fitted on its val ones."""
    if name not in intervals:
        raise StageError(f"no CIs for candidate {name!r} in {INTERVALS}: re-run the evaluate stage")
    try:
        test, val = (read_split(probabilities, name, s, params.classes) for s in ("test", "val"))
    except KeyError as exc:
        raise StageError(exc.args[0]) from None
    cis = intervals[name]
    if len(test.labels) != len(y_test) or np.any(test.labels != y_test):
        raise StageError(f"the saved test probabilities of {name} do not match the prepared test split: "
                         "re-run the evaluate stage")
    analysis = calibration_summary(y_test, test.probabilities, val.labels, val.probabilities, params.report,
                                   cv_folds(params, name))
    return test.probabilities, analysis | {"ci95": cis["slice"], "series_ci95": cis.get("series")}


def cv_folds(params: Params, name: str) -> np.ndarray | None:
    """Under cv_refit, each out-of-fold row's fold (leakage's cv_predictions.csv), in the saved order; else None."""
    if params.evaluate.protocol != "cv_refit":
        return None
    frame = load_probabilities(Path(params.paths.leakage), CV_PREDICTIONS)
    rows = frame[(frame["candidate"] == name) & (frame["split"] == CV_SPLIT)].sort_values("index")
    return rows["fold"].to_numpy()


def study_section(name: str, study: dict | None, figs: Path) -> dict | None:
    """The study model's part of the page: the decision rule, series calibration, the conformal certificate
    (coverage per class, set sizes, decided share) and the coverage/set-size curve."""
    if not study:
        return None
    conformal = study.get("conformal")
    section = {"pooling": study["pooling"], "rule": study.get("rule"), "ece": study.get("ece_series"),
               "slice_in_series": study.get("slice_in_series_macro_f1"),
               "shift": study.get("shift"), "shift_rows": [[c, r, study["shift"]["shifted"]["recall"][c]]
                                                          for c, r in study["shift"]["plain"]["recall"].items()]
               if study.get("shift") else [],
               "fitted_on": study.get("fitted_on", ""), "conformal": None}
    if conformal:
        certified = conformal.get("certified") or {}
        summary = certified.get("summary") or {}
        rows = [[key, v["estimate"], f"{v['low']}-{v['high']}" if v.get("low") is not None else "",
                 conformal["measured"].get(key)] for key, v in summary.items()]
        section["conformal"] = {"target": conformal["calibration"]["coverage"],
                                "method": conformal["calibration"]["method"],
                                "mondrian": conformal["calibration"]["mondrian"], "rows": rows,
                                "measured_on": conformal["measured_on"], "not_certified":
                                certified.get("not_certified"), "chart": None}
        if conformal.get("curve"):
            figures.coverage_curve(conformal["curve"], figs / f"coverage_{name}.png",
                                   f"{name}: conformal sets per study")
            section["conformal"]["chart"] = figure(figs / f"coverage_{name}.png",
                                                   f"{name}: coverage and set size over target coverages")
    return section


def gradcam_rows(model, x_test, y_test, probs, classes, per_class) -> list:
    """Overlay rows per true class: correct and wrong test images with their Grad-CAM."""
    from components.common.gradcam import gradcam, overlay

    y_pred = probs.argmax(axis=1)
    picks = pick_examples(y_test, y_pred, len(classes), per_class)
    if not picks:
        return []
    index = [i for _, i, _ in picks]
    heat = gradcam(model, np.asarray(x_test[index], "float32"))
    rows: dict[str, list] = {}
    for (c, i, right), h in zip(picks, heat):
        caption = f"{'✓' if right else '✗'} {classes[y_pred[i]]} {probs[i].max():.2f}"
        rows.setdefault(classes[c], []).append((overlay(np.asarray(x_test[i])[..., 0], h), caption))
    return list(rows.items())


def data_section(params: Params, prepared: dict, split: pd.DataFrame, x_test, y_test, figs: Path) -> dict:
    """Draws the data figures; the page's data section (counts, group sizes, samples, augmentation)."""
    figures.class_counts(prepared["per_split"], params.classes, figs / "class_counts.png")
    figures.group_sizes(sorted(Counter(split["group"]).values()), figs / "group_sizes.png")
    samples = {c: [np.asarray(x_test[i])[..., 0] for i in np.flatnonzero(y_test == k)[:4]]
               for k, c in enumerate(params.classes)}
    figures.samples_per_class({c: v for c, v in samples.items() if v}, figs / "samples.png")
    return {"prepared": prepared,
            "figures": [figure(figs / "class_counts.png", "Images per class and split"),
                        figure(figs / "group_sizes.png", "Group size distribution"),
                        figure(figs / "samples.png", "Sample test images per class"),
                        figure(Path(params.paths.augment_preview) / "preview.png", "Augmented training samples")]}


def candidate_section(name: str, metrics: dict, analysis: dict, params: Params, figs: Path, grad_rows: list) -> dict:
    """Draws one candidate's figures; its part of the page (scores with CIs, calibration, per-class table)."""
    plots = Path(params.paths.evaluation) / "plots"
    cis = analysis["ci95"]
    figures.metrics_with_ci({name: cis}, figs / f"metrics_ci_{name}.png", f"{name}: test metrics with 95% CIs (bootstrap over groups)")  # noqa: E501
    figures.reliability_diagram(analysis["reliability_before"], analysis["reliability_after"],
                                (analysis["ece_before"], analysis["ece_after"]), figs / f"reliability_{name}.png")
    if grad_rows:
        figures.gradcam_grid(grad_rows, figs / f"gradcam_{name}.png", f"{name}: Grad-CAM, correct (✓) and wrong (✗)")
    per_class = [[c, v["precision"], v["recall"], ci(cis[f"recall_{c}"]), v["f1"], v["support"]]
                 for c, v in metrics["per_class"].items()]
    shown = [figure(plots / f"curves_{name}.png", f"{name}: training and validation curves, best epochs marked"),
             figure(plots / f"confusion_{name}.png", f"{name}: confusion matrix"),
             figure(figs / f"metrics_ci_{name}.png", f"{name}: metrics with 95% confidence intervals"),
             figure(figs / f"reliability_{name}.png", f"{name}: reliability diagram")]
    if grad_rows:
        shown.append(figure(figs / f"gradcam_{name}.png", f"{name}: Grad-CAM overlays"))
    protocol = metrics.get("protocol") or {"name": "holdout", "certified_on": "the group-aware test split"}
    return {"name": name, "cis": cis, "per_class": per_class, "figures": shown,
            "certified_on": protocol["certified_on"], "refit": protocol["name"] == "cv_refit",
            "series": series_scores(metrics.get("series"), analysis.get("series_ci95")),
            "energy": metrics.get("gradcam_outside_body"),
            **{k: analysis[k] for k in ("ece_before", "ece_after", "temperature", "temperature_fitted_on")}}


def series_scores(series: dict | None, cis: dict | None) -> dict | None:
    """The study verdict: pooled series-level scores with CIs (bootstrap over series); None when not evaluated."""
    if not series or not cis:
        return None
    rows = [[c, v["recall"], ci(cis[f"recall_{c}"]), v["support"]] for c, v in series["per_class"].items()]
    return {"count": series["series"], "pooling": series["pooling"], "cis": cis, "rows": rows}


def comparison_section(metrics: dict, plots: Path) -> dict:
    """One row per candidate: test metrics, series metrics, and the size/cost columns any candidate has."""
    keys = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "test_loss"]
    extra = [k for k in ("parameters", "training_seconds", "inference_ms_per_image") if any(k in m for m in metrics.values())]
    rows = [[n, *(m[k] for k in keys), *(m.get("series", {}).get(k, "") for k in ("accuracy", "macro_f1")),
             *(m.get(k, "") for k in extra)] for n, m in metrics.items()]
    chart = plots / "comparison.png"
    return {"extra": extra, "rows": rows, "chart": figure(chart, "Metrics per candidate") if chart.is_file() else None}


def leakage_section(leakage: dict | None, grouped: dict, figs: Path) -> dict | None:
    """Honest (unseen groups) vs leaky (random split) scores and the grouped CV; None without a random split."""
    if not leakage or "random_split" not in leakage:
        return None
    r = leakage["random_split"]
    figures.leakage_bars(grouped, r, figs / "leakage.png")
    rows = [["unseen groups (honest)", grouped["accuracy"], grouped["macro_f1"]],
            ["random image split (leaky)", r["accuracy"], r["macro_f1"]],
            ["gap", r["accuracy"] - grouped["accuracy"], r["macro_f1"] - grouped["macro_f1"]]]
    cv = leakage.get("grouped_cv")
    cv_rows = [[k, v["mean"], v["std"]] for k, v in cv.items() if isinstance(v, dict) and "mean" in v] if cv else None
    return {"candidate": leakage["candidate"], "shared_groups": r["groups_shared_with_test"], "rows": rows,
            "chart": figure(figs / "leakage.png", "Leakage gap"), "cv_rows": cv_rows}


def drift_section(report: dict | None, folder: Path) -> dict | None:
    """The monitor's verdict, its drifted tests and figure (the new data against the champion's own)."""
    if not report:
        return None
    tests = [[t["column"], t["test"], t["p_value"], t["alpha"], t["distance_name"], t["distance"], t["min_distance"],
              "DRIFT" if t["drifted"] else "ok"] for t in report.get("tests", [])]
    performance = report.get("performance")
    return {"status": report["status"], "reasons": report.get("reasons", []), "tests": tests,
            "performance": performance, "chart": figure(folder / "drift.png", "Per-series distributions: the "
                                                        "champion's training data (grey) vs the new data (blue)")
            if tests else None, "html": str(folder / "evidently.html")}


def certified_arrays(params: Params, arrays: Path, x_test: np.ndarray, y_test: np.ndarray):
    """The images evaluate's "test" probabilities describe: the test split, or under cv_refit every image
    (the grouped CV's out-of-fold predictions, in the order train, val, test)."""
    if params.evaluate.protocol != "cv_refit":
        return x_test, y_test
    return (np.concatenate([np.load(arrays / f"X_{s}.npy", mmap_mode="r") for s in SPLITS]),
            np.concatenate([np.load(arrays / f"y_{s}.npy") for s in SPLITS]))


def run(params: Params, args: argparse.Namespace) -> None:
    prepared_dir, figs = Path(params.paths.prepared), Path(params.paths.report) / "figures"
    prepared = read_json(prepared_dir / "preprocess.json")
    metrics = {n: m for n, m in read_json(Path(params.paths.evaluation) / "metrics.json").items() if n in params.train.candidates}
    leakage_file = Path(params.paths.leakage) / "leakage.json"
    leakage = read_json(leakage_file) if leakage_file.is_file() else None
    split = pd.read_csv(prepared_dir / "split.csv", dtype=str)
    arrays = prepared_dir / "arrays"
    x_test, y_test = np.load(arrays / "X_test.npy", mmap_mode="r"), np.load(arrays / "y_test.npy")
    probabilities, intervals = load_evaluation(params)
    context = {"data": data_section(params, prepared, split, x_test, y_test, figs),
               "comparison": comparison_section(metrics, Path(params.paths.evaluation) / "plots"), "candidates": []}
    summary = {}
    x_scored, y_scored = certified_arrays(params, arrays, x_test, y_test)
    for name in metrics:
        probs_test, analysis = saved_analysis(params, name, probabilities, intervals, y_scored)
        per_class = params.report.gradcam_per_class
        rows = (gradcam_rows(load_model(params, name), x_scored, y_scored, probs_test, params.classes, per_class)
                if per_class else [])
        context["candidates"].append(candidate_section(name, metrics[name], analysis, params, figs, rows)
                                     | {"study": study_section(name, metrics[name].get("study"), figs)})
        summary[name] = {k: analysis[k] for k in ("ci95", "series_ci95", "temperature", "ece_before", "ece_after")}
    lead = (leakage or {}).get("candidate") or next(iter(metrics))
    context["leakage"] = leakage_section(leakage, metrics[lead], figs)
    monitor = Path(params.paths.monitor)
    context["drift"] = drift_section(read_json(monitor / "monitor.json") if (monitor / "monitor.json").is_file()
                                     else None, monitor)
    title = f"Kidney CT pipeline report — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    out = Path(params.paths.report)
    (out / "report.html").write_text(page(title, context))
    write_json(out / "report.json", {"candidates": summary, "leakage": leakage, "groups": prepared["groups"]})
    log_to_mlflow(params, out, summary)
    log.info("wrote %s (%d figures)", out / "report.html", len(list(figs.glob("*.png"))))


def log_to_mlflow(params: Params, out: Path, summary: dict[str, dict]) -> None:
    """Attach the report to every candidate's MLflow run."""
    import mlflow

    from components.common.tracking import configure_mlflow

    configure_mlflow(params.mlflow)
    for name, candidate in summary.items():
        run_id = json.loads((Path(params.paths.models) / name / "run.json").read_text())["run_id"]
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(out / "report.html"), "report")
            mlflow.log_metrics({"test_ece": candidate["ece_before"], "test_ece_scaled": candidate["ece_after"],
                                "temperature": candidate["temperature"],
                                "test_macro_f1_ci_low": candidate["ci95"]["macro_f1"]["low"],
                                "test_macro_f1_ci_high": candidate["ci95"]["macro_f1"]["high"]})


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Write one self-contained HTML report of the run: data, curves, confusion, CIs, "
                          "calibration, Grad-CAM, and the honest-vs-leaky comparison.")
    return run_stage("report", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
