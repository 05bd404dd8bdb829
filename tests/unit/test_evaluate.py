"""Metrics, the gate and the winner: numbers that must not flatter."""

import numpy as np
import pytest

from components.common.params import EvaluateParams
from components.evaluate.core import gate_verdict, pick_winner
from components.lib.metrics import classification_metrics

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
    gate = EvaluateParams(min_accuracy=0.8, min_macro_f1=0.7, min_class_recall=0, min_series_macro_f1=0)
    passed, reasons = gate_verdict({"accuracy": 0.75, "macro_f1": 0.5}, gate)
    assert not passed
    assert reasons == ["accuracy 0.750 is below the minimum 0.800", "macro-F1 0.500 is below the minimum 0.700"]
    assert gate_verdict({"accuracy": 0.8, "macro_f1": 0.7}, gate) == (True, [])


def test_gate_refuses_a_model_that_misses_one_class():
    gate = EvaluateParams(min_accuracy=0.5, min_macro_f1=0.5, min_class_recall=0.85, min_series_macro_f1=0)
    metrics = {"accuracy": 0.9, "macro_f1": 0.9,
               "per_class": {"Cyst": {"recall": 0.99}, "Stone": {"recall": 0.40}, "Tumor": {"recall": 0.85}}}
    passed, reasons = gate_verdict(metrics, gate)
    assert not passed
    assert reasons == ["Stone recall 0.400 is below the minimum per-class recall 0.850"]
    metrics["per_class"]["Stone"]["recall"] = 0.86
    assert gate_verdict(metrics, gate) == (True, [])


def test_winner_is_best_passing_candidate_ties_to_smaller_model():
    results = {
        "big": {"passed": True, "metrics": {"macro_f1": 0.9}, "parameters": 1000},
        "small": {"passed": True, "metrics": {"macro_f1": 0.9}, "parameters": 10},
        "best_but_failed": {"passed": False, "metrics": {"macro_f1": 0.99}, "parameters": 1},
    }
    assert pick_winner(results, "macro_f1") == "small"
    assert pick_winner({"x": {"passed": False, "metrics": {"macro_f1": 1.0}}}, "macro_f1") is None


def test_equal_gate_metric_goes_to_the_cheaper_inference():
    results = {
        "slow_small": {"passed": True, "metrics": {"macro_f1": 0.9}, "parameters": 10, "inference_ms_per_image": 9.0},
        "fast_big": {"passed": True, "metrics": {"macro_f1": 0.9}, "parameters": 1000, "inference_ms_per_image": 2.0},
        "worse": {"passed": True, "metrics": {"macro_f1": 0.8}, "parameters": 1, "inference_ms_per_image": 0.1},
    }
    assert pick_winner(results, "macro_f1") == "fast_big"


def test_comparison_table_holds_every_candidate_and_names_the_winner(tmp_path):
    from components.evaluate.comparison import COLUMNS, comparison_markdown, comparison_rows, save_comparison_chart

    metrics = {"accuracy": 0.8, "macro_precision": 0.7, "macro_recall": 0.75, "macro_f1": 0.72, "test_loss": 0.5,
               "series": {"accuracy": 0.9, "macro_f1": 0.85, "pooling": "mean"}}
    results = {name: {"passed": name != "vit", "metrics": metrics, "parameters": 1234, "architecture": name,
                      "training_seconds": 12.5, "inference_ms_per_image": 3.25} for name in ("paper_cnn", "vit")}
    rows = comparison_rows(results, "paper_cnn")
    assert [r["candidate"] for r in rows] == ["paper_cnn", "vit"] and set(rows[0]) == set(COLUMNS)
    table = comparison_markdown(rows, "macro_f1", "mean")
    assert ("| paper_cnn | paper_cnn | yes | yes | 0.800 | 0.700 | 0.750 | 0.720 | 0.500 | 0.900 | 0.850 | 1,234 | "
            "12.500 | 3.250 |") in table
    assert "the mean of its slices' probabilities" in table
    assert "Winner: **paper_cnn**" in table
    assert "No candidate passed" in comparison_markdown(comparison_rows(results, None), "macro_f1")
    save_comparison_chart(rows, tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 5000


def test_inference_timing_is_a_median_of_single_image_calls():
    from components.evaluate.comparison import inference_ms_per_image

    seen = []
    ms = inference_ms_per_image(lambda batch: seen.append(batch.shape), np.zeros((3, 8, 8, 1)), samples=5, warmup=2)
    assert ms >= 0 and seen == [(1, 8, 8, 1)] * 7
    with pytest.raises(ValueError, match="no images"):
        inference_ms_per_image(lambda batch: None, np.zeros((0, 8, 8, 1)))


def test_series_scores_pool_each_series_and_bootstrap_over_series_not_slices():
    from components.evaluate.core import series_scores

    # 8 series of 3 slices: series 7 (a Stone) has two slices called Normal, so its mean verdict is wrong
    y = np.repeat([0, 1, 2, 3, 0, 1, 2, 3], 3)
    predicted = list(y[:21]) + [0, 0, 3]
    series = [f"s{i}" for i in np.repeat(np.arange(8), 3)]
    scores, cis = series_scores(y, one_hot_probs(predicted), series, CLASSES, "mean", resamples=200)
    assert scores["series"] == 8 and scores["pooling"] == "mean"
    assert scores["accuracy"] == pytest.approx(7 / 8)
    assert scores["per_class"]["Stone"]["recall"] == pytest.approx(0.5)
    assert cis["accuracy"]["groups"] == 8  # resampled series, not the 24 slices
    assert scores["accuracy_ci"][0] <= scores["accuracy"] <= scores["accuracy_ci"][1] < 1.0 + 1e-9
    assert set(scores["recall_ci"]) == set(CLASSES)
    assert scores["recall_ci"]["Stone"][0] <= 0.5 <= scores["recall_ci"]["Stone"][1]
    worst, _ = series_scores(y, one_hot_probs(predicted), series, CLASSES, "max", resamples=50)
    assert worst["pooling"] == "max"  # the pooling asked for is the one recorded


def test_metrics_entry_and_protocol_say_how_the_figures_were_obtained():
    from components.evaluate.core import COST_KEYS, metrics_entry, protocol_entry

    result = {"metrics": {"accuracy": 0.9, "confusion_matrix": [[1]], "series": {"macro_f1": 0.8, "confusion_matrix": [[1]]}},
              **{key: 1 for key in COST_KEYS}}
    entry = metrics_entry(result)
    assert "confusion_matrix" not in entry and "confusion_matrix" not in entry["series"]
    assert entry["accuracy"] == 0.9 and all(entry[key] == 1 for key in COST_KEYS)
    assert protocol_entry(None)["protocol"]["name"] == "holdout"
    cv = protocol_entry({"folds": 5, "macro_f1": [0.7] * 5, "folds_fingerprint": "abc"})["protocol"]
    assert (cv["name"], cv["folds"], cv["folds_fingerprint"]) == ("cv_refit", 5, "abc")
