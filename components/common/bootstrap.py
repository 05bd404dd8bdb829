"""Confidence intervals by bootstrap over groups (patients / scan series), not over images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


def group_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str], metrics: dict[str, Metric],
                    resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Percentile CIs: resample whole groups with replacement, recompute each metric.

    Images of one series are correlated, so resampling images would give intervals that are too narrow.
    """
    names = np.array(groups)
    unique = np.unique(names)
    members = [np.flatnonzero(names == g) for g in unique]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(resamples):
        index = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        for name, fn in metrics.items():
            draws[name].append(fn(y_true[index], y_pred[index]))
    tail = (1 - level) / 2 * 100
    return {name: {"estimate": float(fn(y_true, y_pred)),
                   "low": float(np.percentile(draws[name], tail)),
                   "high": float(np.percentile(draws[name], 100 - tail)),
                   "groups": int(len(unique)), "resamples": resamples}
            for name, fn in metrics.items()}


def paired_group_bootstrap(y_true: np.ndarray, challenger: np.ndarray, champion: np.ndarray, groups: list[str],
                           metric: Metric, resamples: int = 1000, seed: int = 0,
                           level: float = 0.95) -> dict[str, float]:
    """CI of metric(challenger) - metric(champion) on the same cases, resampling whole groups.

    Both models are scored on every draw's same cases, so what the cases share (their difficulty) cancels
    out of the difference, and the interval is far narrower than two separate intervals would suggest.
    """
    names = np.array(groups)
    unique = np.unique(names)
    members = [np.flatnonzero(names == g) for g in unique]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        index = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        draws.append(metric(y_true[index], challenger[index]) - metric(y_true[index], champion[index]))
    tail = (1 - level) / 2 * 100
    return {"challenger": float(metric(y_true, challenger)), "champion": float(metric(y_true, champion)),
            "difference": float(metric(y_true, challenger) - metric(y_true, champion)),
            "low": float(np.percentile(draws, tail)), "high": float(np.percentile(draws, 100 - tail)),
            "groups": int(len(unique)), "cases": int(len(names)), "resamples": resamples}


def score_function(name: str, n_classes: int) -> Metric:
    """accuracy or macro-F1 over every class (a class absent from a resample scores 0, as in evaluate)."""
    from sklearn.metrics import f1_score

    labels = list(range(n_classes))
    if name == "accuracy":
        return lambda y, p: float(np.mean(np.asarray(y) == np.asarray(p)))
    if name == "macro_f1":
        return lambda y, p: float(f1_score(y, p, labels=labels, average="macro", zero_division=0))
    raise ValueError(f"unknown score {name!r}: accuracy or macro_f1")
