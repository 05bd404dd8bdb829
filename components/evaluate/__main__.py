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
from components.evaluate.core import classification_metrics, gate_verdict, pick_winner


def evaluate_candidate(name: str, params: Params, x_test: np.ndarray, y_test: np.ndarray) -> dict:
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
    passed, reasons = gate_verdict(metrics, params.evaluate)
    plots = Path(params.paths.evaluation) / "plots"
    save_confusion_matrix(np.array(metrics["confusion_matrix"]), params.classes, plots / f"confusion_{name}.png",
                          f"{name}: test confusion matrix (group-aware split)")
    save_training_curves(json.loads((folder / "history.json").read_text()), plots / f"curves_{name}.png",
                         f"{name}: training curves")
    with mlflow.start_run(run_id=run_info["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items() if isinstance(v, float)})
        mlflow.set_tags({"gate_passed": str(passed).lower(), "gate_reasons": "; ".join(reasons) or "none"})
        mlflow.log_artifact(str(plots / f"confusion_{name}.png"), "evaluation")
        mlflow.log_artifact(str(plots / f"curves_{name}.png"), "evaluation")
    return {"passed": passed, "reasons": reasons, "metrics": metrics, "run_id": run_info["run_id"],
            "model_uri": run_info["model_uri"], "parameters": run_info["parameters"]}


def run(params: Params, args: argparse.Namespace) -> None:
    arrays = Path(params.paths.prepared) / "arrays"
    if not (arrays / "X_test.npy").is_file():
        raise StageError(f"{arrays} has no X_test.npy: run the preprocess stage first")
    x_test, y_test = np.load(arrays / "X_test.npy", mmap_mode="r"), np.load(arrays / "y_test.npy")
    if len(y_test) == 0:
        raise StageError("the test split is empty: add data or raise preprocess.test_fraction")
    configure_mlflow(params.mlflow)
    results = {name: evaluate_candidate(name, params, x_test, y_test) for name in params.train.candidates}
    winner = pick_winner(results, params.evaluate.gate_metric)
    out = Path(params.paths.evaluation)
    write_json(out / "verdict.json", {"winner": winner, "gate": params.evaluate.model_dump(),
                                      "candidates": {n: {k: r[k] for k in ("passed", "reasons", "run_id", "model_uri")}
                                                     | {"gate_metric": r["metrics"][params.evaluate.gate_metric]}
                                                     for n, r in results.items()}})
    write_json(out / "metrics.json", {n: {k: v for k, v in r["metrics"].items() if k != "confusion_matrix"}
                                      for n, r in results.items()})
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
