"""Pure core of the report: calibration and example picks for one candidate's predictions."""

from __future__ import annotations

import numpy as np

from components.common.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability
from components.common.params import ReportParams


def calibration_summary(y_test: np.ndarray, probs_test: np.ndarray, y_val: np.ndarray, probs_val: np.ndarray,
                        settings: ReportParams) -> dict:
    """Calibration before/after a temperature fitted on validation (the CIs come from evaluate)."""
    temperature = fit_temperature(y_val, probs_val)
    scaled = apply_temperature(probs_test, temperature)
    bins = settings.calibration_bins
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(y_test, probs_test, bins),
        "ece_after": expected_calibration_error(y_test, scaled, bins),
        "reliability_before": reliability(y_test, probs_test, bins),
        "reliability_after": reliability(y_test, scaled, bins),
    }


def pick_examples(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, per_class: int) -> list[tuple[int, int, bool]]:
    """(class, index, correct) picks: up to `per_class` right and `per_class` wrong test images per true class."""
    picks = []
    for c in range(n_classes):
        of_class = np.flatnonzero(y_true == c)
        right = [int(i) for i in of_class if y_pred[i] == c][:per_class]
        wrong = [int(i) for i in of_class if y_pred[i] != c][:per_class]
        picks += [(c, i, True) for i in right] + [(c, i, False) for i in wrong]
    return picks
