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
