"""Calibration: ECE measures the gap; temperature scaling closes it on over-confident models."""

import numpy as np
import pytest

from components.common.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability


def overconfident(n=2000, seed=0):
    """A 4-class 'model' that is right 70% of the time but always says 0.97."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + rng.integers(1, 4, n)) % 4)
    probs = np.full((n, 4), 0.01)
    probs[np.arange(n), pred] = 0.97
    return y, probs


def test_perfectly_calibrated_has_zero_ece():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)


def test_overconfidence_is_measured():
    y, probs = overconfident()
    assert expected_calibration_error(y, probs) == pytest.approx(0.27, abs=0.03)
    curve = reliability(y, probs)
    assert curve.count.sum() == len(y)


def test_temperature_scaling_reduces_ece_and_keeps_predictions():
    y, probs = overconfident()
    t = fit_temperature(y[:1000], probs[:1000])
    assert t > 1.0  # softening
    scaled = apply_temperature(probs[1000:], t)
    assert np.array_equal(scaled.argmax(axis=1), probs[1000:].argmax(axis=1))
    assert expected_calibration_error(y[1000:], scaled) < 0.5 * expected_calibration_error(y[1000:], probs[1000:])
    assert np.allclose(scaled.sum(axis=1), 1.0)


def test_temperature_one_is_identity_and_empty_fit_is_one():
    probs = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(apply_temperature(probs, 1.0), probs)
    assert fit_temperature(np.array([], dtype=int), np.zeros((0, 3))) == 1.0
