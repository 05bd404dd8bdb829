"""Pure core of the report: calibration and example picks for one candidate's predictions."""

from __future__ import annotations

import numpy as np

from components.common.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability
from components.common.params import ReportParams


def calibration_summary(y_test: np.ndarray, probs_test: np.ndarray, y_val: np.ndarray, probs_val: np.ndarray,
                        settings: ReportParams, folds: np.ndarray | None = None) -> dict:
    """Calibration before/after temperature scaling (the CIs come from evaluate).

    holdout: T fitted on the validation predictions, applied to the test ones. cv_refit (`folds`: each test row's
    grouped-CV fold): the test rows are out-of-fold predictions and the validation ones in-sample to the refitted
    model, so T is fitted where it is applied: each fold scaled by a T fitted on the other folds' out-of-fold rows
    (the T reported is the one fitted on all of them).
    """
    bins = settings.calibration_bins
    if folds is None:
        temperature = fit_temperature(y_val, probs_val)
        scaled = apply_temperature(probs_test, temperature)
        fitted_on = "validation"
    else:
        temperature, scaled = fit_temperature(y_test, probs_test), np.zeros_like(probs_test)
        for fold in np.unique(folds):
            held = folds == fold
            scaled[held] = apply_temperature(probs_test[held], fit_temperature(y_test[~held], probs_test[~held]))
        fitted_on = "out-of-fold predictions of the other folds"
    return {
        "temperature": temperature,
        "temperature_fitted_on": fitted_on,
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
