"""CLI: python -m components.evaluate — score every candidate on the held-out test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.plots import save_confusion_matrix, save_training_curves
from components.common.pooling import series_ids
from components.common.study_model import StudyModel
from components.common.tracking import configure_mlflow
from components.evaluate.comparison import (
    COLUMNS,
    comparison_markdown,
    comparison_rows,
    inference_ms_per_image,
    save_comparison_chart,
)
from components.evaluate.core import (
    COST_KEYS,
    bootstrap_cis,
    ci_keys,
    gate_verdict,
    metrics_entry,
    pick_winner,
    protocol_entry,
    verdict_scores,
)
from components.evaluate.study import StudyFitError, fit_for_candidate, settings_from, study_figures
from components.lib.metrics import classification_metrics
from components.lib.predictions import (
    CV_PREDICTIONS,
    CV_SPLIT,
    INTERVALS,
    PROBABILITIES,
    SHIFT_PREFIX,
    SplitPredictions,
    load_probabilities,
    probability_rows,
    read_split,
)


def split_tables(params: Params) -> dict:
    """The val and test rows of split.csv (key, group, series), each in the order of its arrays."""
    import pandas as pd

    split = pd.read_csv(Path(params.paths.prepared) / "split.csv", dtype=str, keep_default_na=False)
    return {name: split.loc[split["split"] == name] for name in ("val", "test")}


def split_predictions(table, y: np.ndarray, probabilities: np.ndarray) -> SplitPredictions:
    groups = table["group"].tolist()
    series = series_ids(groups, table["series"].tolist() if "series" in table else None)
    return SplitPredictions(y, probabilities, groups, series, table["key"].tolist())


def cv_certification(name: str, params: Params) -> tuple[SplitPredictions, dict, np.ndarray, np.ndarray | None]:
    """The out-of-fold predictions of the leakage stage's grouped CV of `name`'s recipe, and that CV's summary.

    cv_refit's deployed model has seen every labelled series, so its figures are those of the same recipe
    trained k times without each fold; a CV of another recipe (or candidate) is refused, never reused.
    """
    from components.lib.folds import recipe_fingerprint

    folder = Path(params.paths.leakage)
    cv = (read_json(folder / "leakage.json") if (folder / "leakage.json").is_file() else {}).get("grouped_cv")
    if not cv or not (folder / CV_PREDICTIONS).is_file():
        raise StageError(f"evaluate.protocol cv_refit needs the grouped CV of {name!r} in {folder}: run the leakage "
                         "stage (leakage.cv_folds >= 2)")
    if cv.get("recipe") != recipe_fingerprint(params, name):
        raise StageError(f"{folder / 'leakage.json'} scored another recipe than {name!r} has now: re-run the "
                         "leakage stage so the certificate matches the model")
    frame = load_probabilities(folder, CV_PREDICTIONS)
    try:
        predictions = read_split(frame, name, CV_SPLIT, params.classes)
    except KeyError as exc:
        raise StageError(f"{folder / CV_PREDICTIONS}: {exc.args[0]}") from None
    rows = frame[(frame["candidate"] == name) & (frame["split"] == CV_SPLIT)].sort_values("index")
    shift_columns = [f"{SHIFT_PREFIX}{c}" for c in params.classes]
    shifted = rows[shift_columns].to_numpy(dtype=float) if all(c in rows for c in shift_columns) else None
    return predictions, cv, rows["fold"].to_numpy(), shifted


def study_model_for(name: str, params: Params, test: SplitPredictions, val: SplitPredictions,
                    cv_folds: np.ndarray | None, shifted: np.ndarray | None = None) -> tuple[StudyModel, tuple, dict]:
    """The candidate's study model (components.evaluate.study), the series verdicts evaluate scores, the study
    block of metrics.json; written to <evaluation>/study/<name>.json for register."""
    holdout = cv_folds is None
    fit_on = val if holdout else test
    try:
        model, figures = fit_for_candidate(fit_on, cv_folds, params.classes, settings_from(params), shifted)
    except StudyFitError as exc:
        raise StageError(f"{name}: {exc}") from None
    verdicts, block = study_figures(model, figures, fit_on, test, params.classes, holdout)
    block["fitted_on"] = "validation split" if holdout else "out-of-fold predictions of the grouped CV"
    write_json(Path(params.paths.evaluation) / "study" / f"{name}.json", model.to_dict())
    return model, verdicts, block


def evaluate_candidate(name: str, params: Params, x_test: np.ndarray, y_test: np.ndarray, tables: dict,
                       x_val: np.ndarray, y_val: np.ndarray) -> dict:
    """Load one trained candidate, score it (slice and series level), draw its plots, log to its MLflow run.

    holdout: scored on the test split; cv_refit: certified by the out-of-fold predictions of its recipe's
    grouped CV (the "test" rows of probabilities.csv are then those), the model having trained on every series.
    """
    import keras
    import mlflow

    folder = Path(params.paths.models) / name
    if not (folder / "model.keras").is_file():
        raise StageError(f"{folder / 'model.keras'} not found: run `train --candidate {name}` first")
    run_info = read_json(folder / "run.json")
    model = keras.saving.load_model(folder / "model.keras")
    predict = lambda x: np.asarray(model.predict(np.asarray(x, "float32"), batch_size=64, verbose=0))  # noqa: E731
    cv = cv_folds = shifted = None
    if params.evaluate.protocol == "cv_refit":
        test, cv, cv_folds, shifted = cv_certification(name, params)
    else:
        test = split_predictions(tables["test"], y_test, predict(x_test))
    val = split_predictions(tables["val"], y_val, predict(x_val) if len(y_val) else np.zeros((0, len(params.classes))))
    study, verdicts, study_block = study_model_for(name, params, test, val, cv_folds, shifted)
    metrics = classification_metrics(test.labels, test.probabilities, params.classes)
    slice_cis = bootstrap_cis(test.labels, test.probabilities.argmax(axis=1), test.groups, params.classes,
                              params.report.bootstrap_resamples)
    metrics |= ci_keys(slice_cis) | protocol_entry(cv)
    metrics["series"], series_cis = verdict_scores(*verdicts, params.classes, study.pooling,
                                                   params.report.bootstrap_resamples)
    metrics["study"] = study_block
    latency = inference_ms_per_image(model.predict_on_batch, x_test)
    metrics["gradcam_outside_body"] = gradcam_outside_body(model, x_val, y_val, params.classes,
                                                           params.report.gradcam_energy_per_class)
    passed, reasons = gate_verdict(metrics, params.evaluate)
    plots = Path(params.paths.evaluation) / "plots"
    save_confusion_matrix(np.array(metrics["confusion_matrix"]), params.classes, plots / f"confusion_{name}.png",
                          f"{name}: confusion matrix ({metrics['protocol']['certified_on']})")
    save_training_curves(json.loads((folder / "history.json").read_text()), plots / f"curves_{name}.png",
                         f"{name}: training curves")
    with mlflow.start_run(run_id=run_info["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
                           | {f"test_series_{k}": metrics["series"][k] for k in ("accuracy", "macro_f1")}
                           | {"inference_ms_per_image": latency})
        mlflow.set_tags({"gate_passed": str(passed).lower(), "gate_reasons": "; ".join(reasons) or "none",
                         "protocol": metrics["protocol"]["name"]})
        mlflow.log_artifact(str(plots / f"confusion_{name}.png"), "evaluation")
        mlflow.log_artifact(str(plots / f"curves_{name}.png"), "evaluation")
    return {"passed": passed, "reasons": reasons, "metrics": metrics, "run_id": run_info["run_id"],
            "model_uri": run_info["model_uri"], "parameters": run_info["parameters"],
            "architecture": run_info.get("architecture", ""), "training_seconds": run_info.get("training_seconds"),
            "inference_ms_per_image": round(latency, 3),
            "predictions": {"test": test, "val": val}, "intervals": {"slice": slice_cis, "series": series_cis}}


def gradcam_outside_body(model, x: np.ndarray, y: np.ndarray, classes: list[str], per_class: int) -> dict | None:
    """The share of Grad-CAM energy outside the body (for the predicted class) on up to `per_class` validation slices
    per true class, evenly spaced: per class and overall. None where the model cannot be explained or no slice."""
    from components.common.gradcam import GradCamError, gradcam, outside_body_share

    picks = {c: np.flatnonzero(y == k) for k, c in enumerate(classes)}
    picks = {c: idx[np.linspace(0, len(idx) - 1, min(per_class, len(idx))).astype(int)]
             for c, idx in picks.items() if len(idx) and per_class}
    if not picks:
        return None
    index = np.concatenate(list(picks.values()))
    images = np.asarray(x[np.sort(index)], dtype="float32")
    order = np.argsort(np.argsort(index))  # back from sorted reads to the picks' order
    try:
        heat = gradcam(model, images)[order]
    except GradCamError as exc:
        log.warning("Grad-CAM energy not measured: %s", exc)
        return None
    shares = outside_body_share(heat, images[order][..., 0])
    bounds = np.cumsum([0] + [len(v) for v in picks.values()])
    per = {c: round(float(shares[a:b].mean()), 4) for c, a, b in zip(picks, bounds[:-1], bounds[1:])}
    return {"overall": round(float(shares.mean()), 4), "per_class": per, "slices": int(len(shares)),
            "on": "validation slices"}


def write_predictions(results: dict[str, dict], params: Params) -> None:
    """probabilities.csv (every candidate's val and test slices) and intervals.json under paths.predictions."""
    import pandas as pd

    out = Path(params.paths.predictions)
    out.mkdir(parents=True, exist_ok=True)
    frames = [probability_rows(name, split, r["predictions"][split], params.classes)
              for name, r in results.items() for split in ("val", "test")]
    pd.concat(frames, ignore_index=True).to_csv(out / PROBABILITIES, index=False)
    write_json(out / INTERVALS, {name: r["intervals"] for name, r in results.items()})


def write_comparison(results: dict[str, dict], winner: str | None, params: Params) -> list[dict]:
    """comparison.csv/.md and plots/comparison.png under the evaluation folder; returns the rows."""
    import pandas as pd

    out = Path(params.paths.evaluation)
    rows = comparison_rows(results, winner)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(comparison_markdown(rows, params.evaluate.gate_metric,
                                                                 params.evaluate.series_pooling))
    save_comparison_chart(rows, out / "plots" / "comparison.png")
    return rows


def close_parent_runs(results: dict[str, dict], winner: str | None, params: Params) -> None:
    """Fold the candidates under one parent run (one per pipeline run), log the comparison to it, finish it."""
    from mlflow import MlflowClient

    from components.lib.parent_runs import merge_parent_runs

    client = MlflowClient()
    parent = merge_parent_runs(client, [r["run_id"] for r in results.values()])
    if parent is None:
        return
    out = Path(params.paths.evaluation)
    client.set_tag(parent, "winner", winner or "none")
    for name, r in results.items():
        client.log_metric(parent, f"{name}.test_{params.evaluate.gate_metric}", r["metrics"][params.evaluate.gate_metric])
    for artifact in (out / "comparison.md", out / "comparison.csv", out / "plots" / "comparison.png"):
        client.log_artifact(parent, str(artifact), "comparison")
    if client.get_run(parent).info.status == "RUNNING":
        client.set_terminated(parent, "FINISHED")


def run(params: Params, args: argparse.Namespace) -> None:
    arrays = Path(params.paths.prepared) / "arrays"
    if not (arrays / "X_test.npy").is_file():
        raise StageError(f"{arrays} has no X_test.npy: run the preprocess stage first")
    x_test, y_test = np.load(arrays / "X_test.npy", mmap_mode="r"), np.load(arrays / "y_test.npy")
    x_val, y_val = np.load(arrays / "X_val.npy", mmap_mode="r"), np.load(arrays / "y_val.npy")
    if len(y_test) == 0:
        raise StageError("the test split is empty: add data or raise preprocess.test_fraction")
    configure_mlflow(params.mlflow)
    tables = split_tables(params)
    skipped = [name for name in params.train.candidates if name not in params.certified_candidates()]
    if skipped:
        log.info("not evaluated: %s (evaluate.protocol cv_refit certifies only %s, the recipe the grouped CV scored)",
                 ", ".join(skipped), params.certified_candidates()[0])
    results = {name: evaluate_candidate(name, params, x_test, y_test, tables, x_val, y_val)
               for name in params.certified_candidates()}
    winner = pick_winner(results, params.evaluate.gate_metric)
    out = Path(params.paths.evaluation)
    write_json(out / "verdict.json", {"winner": winner, "gate": params.evaluate.model_dump(),
                                      "candidates": {n: {k: r[k] for k in ("passed", "reasons", "run_id", "model_uri")}
                                                     | {"gate_metric": r["metrics"][params.evaluate.gate_metric]}
                                                     | {k: r[k] for k in COST_KEYS}
                                                     for n, r in results.items()}})
    write_json(out / "metrics.json", {n: metrics_entry(r) for n, r in results.items()})
    write_predictions(results, params)
    write_comparison(results, winner, params)
    close_parent_runs(results, winner, params)
    for name, r in results.items():
        m = r["metrics"]
        log.info("%s: accuracy %.3f, macro-F1 %.3f on %d images (%s); series macro-F1 %.3f on %d series -> %s%s",
                 name, m["accuracy"], m["macro_f1"], m["test_images"], m["protocol"]["certified_on"],
                 m["series"]["macro_f1"], m["series"]["series"],
                 "PASSED" if r["passed"] else "FAILED", "" if r["passed"] else f" ({'; '.join(r['reasons'])})")
    log.info("winner: %s", winner or "none: no candidate passed the gates")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Score every candidate on the group-aware test split and apply the gates from params.")
    return run_stage("evaluate", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
