"""Scores of predictions that several stages compute: slice and series metrics, and the bootstrap's metric functions."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)

from components.common.bootstrap import class_recall, macro_f1
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
    return verdict_metrics(series_labels(y_true, series, order), pooled, classes, pooling)


def verdict_metrics(truth: np.ndarray, pooled: np.ndarray, classes: list[str], pooling: str) -> dict:
    """Study-level scores of given series verdicts: (series, K) probabilities against each series' label."""
    labels = list(range(len(classes)))
    y_pred = pooled.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(truth, y_pred, labels=labels, zero_division=0)
    return {
        "pooling": pooling,
        "accuracy": float(accuracy_score(truth, y_pred)),
        "macro_f1": float(f1.mean()),
        "series": int(len(pooled)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(truth, y_pred, labels=labels).tolist(),
    }


def metric_functions(n_classes: int, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and each class's recall as (y_true, y_pred) -> float (bincount-fast: the bootstrap's)."""
    fns = {"accuracy": lambda y, p: float(np.mean(y == p)), "macro_f1": lambda y, p: macro_f1(y, p, n_classes)}
    for i, name in enumerate(classes):
        fns[f"recall_{name}"] = (lambda k: lambda y, p: class_recall(y, p, n_classes, k))(i)
    return fns
