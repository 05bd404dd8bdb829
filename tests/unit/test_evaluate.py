"""Metrics, the gate and the winner: numbers that must not flatter."""

import numpy as np
import pytest

from components.common.params import EvaluateParams
from components.evaluate.core import classification_metrics, gate_verdict, pick_winner

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def one_hot_probs(predicted: list[int], confidence: float = 0.97) -> np.ndarray:
    probs = np.full((len(predicted), 4), (1 - confidence) / 3)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_perfect_predictions():
    y = np.array([0, 1, 2, 3, 0, 1])
    m = classification_metrics(y, one_hot_probs(list(y)), CLASSES)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["confusion_matrix"] == np.diag([2, 2, 1, 1]).tolist()
    assert m["test_loss"] == pytest.approx(-np.log(0.97), rel=1e-3)


def test_majority_class_guessing_gets_low_macro_f1():
    y = np.array([0] * 7 + [1, 2, 3])
    m = classification_metrics(y, one_hot_probs([0] * 10), CLASSES)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["macro_f1"] < 0.25  # accuracy flatters, macro-F1 does not
    assert m["per_class"]["Stone"]["recall"] == 0.0
    assert m["per_class"]["Normal"]["support"] == 7


def test_empty_test_split_refused():
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 4)), CLASSES)


def test_gate_names_every_miss():
    gate = EvaluateParams(min_accuracy=0.8, min_macro_f1=0.7)
    passed, reasons = gate_verdict({"accuracy": 0.75, "macro_f1": 0.5}, gate)
    assert not passed
    assert reasons == ["accuracy 0.750 is below the minimum 0.800", "macro-F1 0.500 is below the minimum 0.700"]
    assert gate_verdict({"accuracy": 0.8, "macro_f1": 0.7}, gate) == (True, [])


def test_winner_is_best_passing_candidate_ties_to_smaller_model():
    results = {
        "big": {"passed": True, "metrics": {"macro_f1": 0.9}, "parameters": 1000},
        "small": {"passed": True, "metrics": {"macro_f1": 0.9}, "parameters": 10},
        "best_but_failed": {"passed": False, "metrics": {"macro_f1": 0.99}, "parameters": 1},
    }
    assert pick_winner(results, "macro_f1") == "small"
    assert pick_winner({"x": {"passed": False, "metrics": {"macro_f1": 1.0}}}, "macro_f1") is None
