"""CLI: python -m components.evaluate — score every candidate on the held-out test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from components.common.cli import StageError, log, read_json, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.plots import save_confusion_matrix, save_training_curves
from components.common.tracking import configure_mlflow
from components.evaluate.comparison import (COLUMNS, comparison_markdown, comparison_rows, inference_ms_per_image,
                                            save_comparison_chart)
from components.evaluate.core import classification_metrics, gate_verdict, pick_winner

COST_KEYS = ("parameters", "training_seconds", "inference_ms_per_image")  # reported beside the test metrics


def confidence_intervals(y_test: np.ndarray, probabilities: np.ndarray, groups_test: list[str], params: Params) -> dict:
    """95% CIs of accuracy and macro-F1 by bootstrap over test groups, as metrics.json `<metric>_ci`."""
    from components.report.bootstrap import group_bootstrap
    from components.report.core import metric_functions

    fns = metric_functions(len(params.classes), params.classes)
    cis = group_bootstrap(y_test, probabilities.argmax(axis=1), groups_test,
                          {k: fns[k] for k in ("accuracy", "macro_f1")}, resamples=params.report.bootstrap_resamples)
    return {f"{k}_ci": [round(v["low"], 4), round(v["high"], 4)] for k, v in cis.items()}


def test_groups(params: Params) -> list[str]:
    """The group of every test image, in the order of the test arrays."""
    import pandas as pd

    split = pd.read_csv(Path(params.paths.prepared) / "split.csv", dtype=str)
    return split.loc[split["split"] == "test", "group"].tolist()


def evaluate_candidate(name: str, params: Params, x_test: np.ndarray, y_test: np.ndarray,
                       groups_test: list[str]) -> dict:
    """Load one trained candidate, score it, draw its plots, log to its MLflow run."""
    import keras
    import mlflow

    folder = Path(params.paths.models) / name
    if not (folder / "model.keras").is_file():
        raise StageError(f"{folder / 'model.keras'} not found: run `train --candidate {name}` first")
    run_info = read_json(folder / "run.json")
    model = keras.saving.load_model(folder / "model.keras")
    probabilities = np.asarray(model.predict(x_test.astype("float32"), batch_size=64, verbose=0))
    metrics = classification_metrics(y_test, probabilities, params.classes)
    metrics |= confidence_intervals(y_test, probabilities, groups_test, params)
    latency = inference_ms_per_image(model.predict_on_batch, x_test)
    passed, reasons = gate_verdict(metrics, params.evaluate)
    plots = Path(params.paths.evaluation) / "plots"
    save_confusion_matrix(np.array(metrics["confusion_matrix"]), params.classes, plots / f"confusion_{name}.png",
                          f"{name}: test confusion matrix (group-aware split)")
    save_training_curves(json.loads((folder / "history.json").read_text()), plots / f"curves_{name}.png",
                         f"{name}: training curves")
    with mlflow.start_run(run_id=run_info["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)}
                           | {"inference_ms_per_image": latency})
        mlflow.set_tags({"gate_passed": str(passed).lower(), "gate_reasons": "; ".join(reasons) or "none"})
        mlflow.log_artifact(str(plots / f"confusion_{name}.png"), "evaluation")
        mlflow.log_artifact(str(plots / f"curves_{name}.png"), "evaluation")
    return {"passed": passed, "reasons": reasons, "metrics": metrics, "run_id": run_info["run_id"],
            "model_uri": run_info["model_uri"], "parameters": run_info["parameters"],
            "architecture": run_info.get("architecture", ""), "training_seconds": run_info.get("training_seconds"),
            "inference_ms_per_image": round(latency, 3)}


def write_comparison(results: dict[str, dict], winner: str | None, params: Params) -> list[dict]:
    """comparison.csv/.md and plots/comparison.png under the evaluation folder; returns the rows."""
    import pandas as pd

    out = Path(params.paths.evaluation)
    rows = comparison_rows(results, winner)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(comparison_markdown(rows, params.evaluate.gate_metric))
    save_comparison_chart(rows, out / "plots" / "comparison.png")
    return rows


def close_parent_runs(results: dict[str, dict], winner: str | None, params: Params) -> None:
    """Fold the candidates under one parent run (one per pipeline run), log the comparison to it, finish it."""
    from mlflow import MlflowClient

    from components.train.parent import merge_parent_runs

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
    if len(y_test) == 0:
        raise StageError("the test split is empty: add data or raise preprocess.test_fraction")
    configure_mlflow(params.mlflow)
    groups = test_groups(params)
    results = {name: evaluate_candidate(name, params, x_test, y_test, groups) for name in params.train.candidates}
    winner = pick_winner(results, params.evaluate.gate_metric)
    out = Path(params.paths.evaluation)
    write_json(out / "verdict.json", {"winner": winner, "gate": params.evaluate.model_dump(),
                                      "candidates": {n: {k: r[k] for k in ("passed", "reasons", "run_id", "model_uri")}
                                                     | {"gate_metric": r["metrics"][params.evaluate.gate_metric]}
                                                     | {k: r[k] for k in COST_KEYS}
                                                     for n, r in results.items()}})
    write_json(out / "metrics.json", {n: {k: v for k, v in r["metrics"].items() if k != "confusion_matrix"}
                                      | {k: r[k] for k in COST_KEYS} for n, r in results.items()})
    write_comparison(results, winner, params)
    close_parent_runs(results, winner, params)
    for name, r in results.items():
        m = r["metrics"]
        log.info("%s: accuracy %.3f, macro-F1 %.3f on %d test images -> %s%s", name, m["accuracy"], m["macro_f1"],
                 m["test_images"], "PASSED" if r["passed"] else "FAILED", "" if r["passed"] else f" ({'; '.join(r['reasons'])})")
    log.info("winner: %s", winner or "none: no candidate passed the gates")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Score every candidate on the group-aware test split and apply the gates from params.")
    return run_stage("evaluate", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
