"""Calibration: expected calibration error, reliability curve, temperature scaling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: mean confidence, accuracy and count (empty bins dropped)."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def reliability(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> Reliability:
    """Bin top-1 confidence into `bins` equal-width bins on (0, 1]."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y_true).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = [(confidence[index == b].mean(), correct[index == b].mean(), int((index == b).sum()))
            for b in range(bins) if np.any(index == b)]
    conf, acc, count = (np.array(col) for col in zip(*rows)) if rows else (np.array([]),) * 3
    return Reliability(conf, acc, count)


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |accuracy - confidence| over confidence bins."""
    curve = reliability(y_true, probabilities, bins)
    if curve.count.sum() == 0:
        return 0.0
    return float(np.sum(curve.count * np.abs(curve.accuracy - curve.confidence)) / curve.count.sum())


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens over-confident probabilities, T = 1 changes nothing."""
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probabilities[np.arange(len(y_true)), y_true], 1e-12, 1.0))))


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising validation NLL (1.0 when there is nothing to fit)."""
    if len(y_true) == 0:
        return 1.0
    result = minimize_scalar(lambda t: negative_log_likelihood(y_true, apply_temperature(probabilities, t)),
                             bounds=(0.05, 20.0), method="bounded")
    return float(result.x)
