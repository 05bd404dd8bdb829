"""Pure core of evaluate: metrics from predictions, the gate, and the winner."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from components.common.params import EvaluateParams
from components.common.pooling import pool_by_series, series_labels


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1, test loss, per-class report and confusion matrix."""
    if len(y_true) == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    labels = list(range(len(classes)))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    clipped = np.clip(probabilities, 1e-7, 1.0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "test_loss": float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=labels)),
        "test_images": int(len(y_true)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def series_metrics(y_true: np.ndarray, probabilities: np.ndarray, series: list[str], classes: list[str],
                   pooling: str = "mean") -> dict:
    """Study-level scores: each series' pooled probabilities against its slices' majority label."""
    order, pooled = pool_by_series(probabilities, series, pooling)
    truth = series_labels(y_true, series, order)
    labels = list(range(len(classes)))
    y_pred = pooled.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(truth, y_pred, labels=labels, zero_division=0)
    return {
        "pooling": pooling,
        "accuracy": float(accuracy_score(truth, y_pred)),
        "macro_f1": float(f1.mean()),
        "series": int(len(order)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(truth, y_pred, labels=labels).tolist(),
    }


GATED_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


def gated_value(metrics: dict, key: str, bound: str) -> tuple[float, str]:
    """The value the gate compares for `key` and how it reads: the estimate, or with `ci_low` its lower 95% bound."""
    interval, label = metrics.get(f"{key}_ci"), GATED_LABELS[key]
    if bound == "ci_low":
        if not interval:
            raise ValueError(f"evaluate.gate_bound ci_low needs a confidence interval of {key}; none was computed")
        return float(interval[0]), f"{label} lower 95% bound {interval[0]:.3f} (estimate {metrics[key]:.3f})"
    return float(metrics[key]), f"{label} {metrics[key]:.3f}"


def gate_verdict(metrics: dict, gate: EvaluateParams) -> tuple[bool, list[str]]:
    """Whether metrics clear the minimums in params, with a plain reason for each miss.

    Accuracy and macro-F1 (slice and series) are compared as `gate.gate_bound` says: the estimate, or the lower
    bound of its 95% CI; per-class recall by its estimate.
    """
    reasons = []
    series = metrics.get("series")
    if gate.min_series_macro_f1 > 0 and series is None:
        reasons.append("no series-level scores to check evaluate.min_series_macro_f1 against")
    elif series is not None:
        value, text = gated_value(series, "macro_f1", gate.gate_bound)
        if value < gate.min_series_macro_f1:
            reasons.append(f"series-level {text} ({series['pooling']} of the slice probabilities over "
                           f"{series['series']} series) is below the minimum {gate.min_series_macro_f1:.3f}")
    for key, minimum in (("accuracy", gate.min_accuracy), ("macro_f1", gate.min_macro_f1)):
        value, text = gated_value(metrics, key, gate.gate_bound)
        if value < minimum:
            reasons.append(f"{text} is below the minimum {minimum:.3f}")
    for name, scores in metrics.get("per_class", {}).items():
        if scores["recall"] < gate.min_class_recall:
            reasons.append(f"{name} recall {scores['recall']:.3f} is below the minimum per-class recall "
                           f"{gate.min_class_recall:.3f}")
    return not reasons, reasons


def pick_winner(results: dict[str, dict], gate_metric: str) -> str | None:
    """Best candidate that passed the gate by `gate_metric`; ties go to the cheaper inference, then fewer parameters."""
    passed = {name: r for name, r in results.items() if r["passed"]}
    if not passed:
        return None
    return min(passed, key=lambda n: (-passed[n]["metrics"][gate_metric],
                                      passed[n].get("inference_ms_per_image", float("inf")),
                                      passed[n].get("parameters", 0), n))
