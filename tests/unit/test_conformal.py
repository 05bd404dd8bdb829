"""Conformal prediction sets: the coverage guarantee holds where it is known, sets widen when the model is unsure,
the calibration survives JSON, cross-validated certification finds the target, and bad input is refused."""

import json
import math

import numpy as np
import pytest
from crepes import ConformalClassifier

from components.common.calibration import apply_temperature, expected_calibration_error, fit_temperature
from components.common.conformal import (
    ConformalCalibration,
    aps_scores,
    certify,
    coverage_curve,
    fit_conformal,
    label_scores,
    lac_scores,
    prediction_sets,
    refer,
    set_label,
    set_scores,
)

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def sampled_labels(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from the row's probabilities: the model is calibrated by construction."""
    return np.minimum((rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1), p.shape[1] - 1)


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(4, 0.5), n)
    return p, sampled_labels(p, rng)


def rare_class_missed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stone is 5% of studies and the model barely backs it there; the common classes are confident and right."""
    rng = np.random.default_rng(seed)
    y = rng.choice(4, n, p=[0.45, 0.3, 0.2, 0.05])
    alpha = np.full((n, 4), 0.3)
    alpha[np.arange(n), y] += 4.0
    alpha[y == 3] = [1.0, 1.0, 1.0, 0.6]
    g = rng.gamma(alpha)
    return g / g.sum(axis=1, keepdims=True), y


def covered(sets: np.ndarray, y: np.ndarray) -> np.ndarray:
    return sets[np.arange(len(y)), y]


@pytest.mark.parametrize("method", ["lac", "aps"])
@pytest.mark.parametrize("mondrian", [False, True])
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_coverage_on_fresh_data_matches_the_target(method, mondrian, coverage):
    p_cal, y_cal = calibrated(5000, seed=1)
    p_test, y_test = calibrated(20000, seed=2)
    calibration = fit_conformal(p_cal, y_cal, coverage, method, mondrian)
    within = label_scores(p_test, y_test, method) <= np.asarray(calibration.thresholds)[y_test]
    hit = covered(prediction_sets(p_test, calibration), y_test)
    assert within.mean() == pytest.approx(coverage, abs=0.02)  # exact, as the calibration is exchangeable
    assert np.all(hit >= within)  # an empty set filled with the argmax only adds
    assert coverage - 0.02 <= hit.mean() <= coverage + (0.02 if method == "lac" else 0.04)  # deterministic APS: more
    if mondrian:
        assert all(hit[y_test == k].mean() >= coverage - 0.03 for k in range(4))


def test_aps_sets_are_nested_by_probability_and_lac_sets_smaller_on_average():
    p_cal, y_cal = calibrated(5000, seed=1)
    p_test, _ = calibrated(5000, seed=2)
    aps = prediction_sets(p_test, fit_conformal(p_cal, y_cal, 0.9, "aps"))
    lac = prediction_sets(p_test, fit_conformal(p_cal, y_cal, 0.9, "lac"))
    rank = np.argsort(np.argsort(-p_test, axis=1), axis=1)  # 0 = most probable
    size = aps.sum(axis=1, keepdims=True)
    assert np.array_equal(aps, rank < size)  # an APS set is always the top-m classes
    assert lac.sum(axis=1).mean() < aps.sum(axis=1).mean()  # LAC gives the smallest sets on average


def test_mondrian_keeps_a_rare_class_that_marginal_trades_away():
    p_cal, y_cal = rare_class_missed(10000, seed=3)
    p_test, y_test = rare_class_missed(20000, seed=4)
    marginal = covered(prediction_sets(p_test, fit_conformal(p_cal, y_cal, 0.9, "lac")), y_test)
    mondrian = covered(prediction_sets(p_test, fit_conformal(p_cal, y_cal, 0.9, "lac", mondrian=True)), y_test)
    stone = y_test == 3
    assert marginal.mean() >= 0.9 - 0.02  # the marginal guarantee holds overall...
    assert marginal[stone].mean() < 0.8  # ...by failing the rare class
    assert mondrian[stone].mean() >= 0.9 - 0.035
    assert all(mondrian[y_test == k].mean() >= 0.9 - 0.02 for k in range(3))


def test_threshold_is_the_finite_sample_quantile():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(4), 199)
    y = rng.integers(0, 4, 199)
    scores = np.sort(label_scores(p, y, "lac"))
    for coverage in (0.8, 0.9, 0.95):  # (n + 1) * coverage = 160, 180, 190: exact integers, no rounding up
        threshold = fit_conformal(p, y, coverage).thresholds[0]
        assert threshold == scores[math.ceil(round(200 * coverage, 9)) - 1]
    assert fit_conformal(p, y, 0.901).thresholds[0] == scores[181 - 1]  # 200 * 0.901 = 180.2 -> 181st


def test_sets_match_crepes_mondrian_p_values():
    p_cal, y_cal = calibrated(800, seed=6)
    p_test, _ = calibrated(300, seed=7)
    calibration = fit_conformal(p_cal, y_cal, 0.9, "aps", mondrian=True)
    classifier = ConformalClassifier().fit(label_scores(p_cal, y_cal, "aps"), bins=y_cal)
    test_scores = aps_scores(p_test)
    expected = np.stack([classifier.predict_p(test_scores[:, k], np.full(len(p_test), k), smoothing=False) > 0.1 + 1e-9
                         for k in range(4)], axis=1)
    empty = ~expected.any(axis=1)
    expected[np.flatnonzero(empty), p_test[empty].argmax(axis=1)] = True
    assert np.array_equal(prediction_sets(p_test, calibration), expected)


def test_an_ambiguous_study_gets_a_wider_set_and_is_referred():
    p_cal, y_cal = calibrated(5000, seed=1)
    calibration = fit_conformal(p_cal, y_cal, 0.9, "lac", mondrian=True)
    rows = np.array([[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25], [0.05, 0.05, 0.45, 0.45]])
    sets = prediction_sets(rows, calibration)
    assert sets[0].tolist() == [True, False, False, False]
    assert sets[1].sum() >= 3 and sets[2, 2] and sets[2, 3]
    assert refer(sets).tolist() == [False, True, True]
    assert set_label(sets[0], rows[0], CLASSES) == "Normal"


def test_set_label_orders_by_probability():
    mask = np.array([True, False, True, False])
    assert set_label(mask, np.array([0.3, 0.1, 0.6, 0.0]), CLASSES) == "Tumor|Normal"
    assert set_label(mask, np.array([0.6, 0.1, 0.3, 0.0]), CLASSES) == "Normal|Tumor"


def test_an_empty_set_becomes_the_argmax_alone():
    strict = ConformalCalibration("lac", 0.9, False, (0.01,) * 4, (100,) * 4)
    sets = prediction_sets(np.array([[0.1, 0.4, 0.3, 0.2], [0.995, 0.005, 0.0, 0.0]]), strict)
    assert sets.tolist() == [[False, True, False, False], [True, False, False, False]]


def test_calibration_round_trips_through_strict_json():
    p, y = calibrated(400, seed=8)
    y[y == 3] = 0
    y[:5] = 3  # 5 Stone rows: too few to certify 90%
    calibration = fit_conformal(p, y, 0.9, "aps", mondrian=True)
    text = json.dumps(calibration.to_dict(), allow_nan=False)
    back = ConformalCalibration.from_dict(json.loads(text))
    assert back == calibration
    assert json.loads(text)["thresholds"][3] is None
    assert np.array_equal(prediction_sets(p, back), prediction_sets(p, calibration))


@pytest.mark.parametrize("stones, flagged", [(0, True), (5, True), (8, True), (9, False), (40, False)])
def test_a_class_with_too_few_calibration_rows_is_flagged_and_always_kept(stones, flagged):
    p, y = calibrated(600, seed=9)
    y[y == 3] = 1
    y[:stones] = 3  # (n + 1) * 0.9 > n until n = 9
    calibration = fit_conformal(p, y, 0.9, "lac", mondrian=True)
    assert calibration.calibration_rows[3] == stones
    assert (3 in calibration.uncertified) is flagged
    assert math.isinf(calibration.thresholds[3]) is flagged
    assert calibration.uncertified in ((3,), ())
    if flagged:
        assert prediction_sets(np.array([[0.999, 0.001, 0.0, 0.0]]), calibration)[0, 3]


def test_marginal_calibration_flags_nothing_when_rows_are_enough():
    p, y = calibrated(100, seed=10)
    assert fit_conformal(p, y, 0.9).uncertified == ()
    assert fit_conformal(p[:5], y[:5], 0.9).uncertified == (0, 1, 2, 3)


def test_certify_by_folds_finds_the_target():
    p, y = calibrated(6000, seed=11)
    folds = np.arange(6000) % 5
    report = certify(p, y, folds, CLASSES, 0.9, "lac", mondrian=True)
    summary = report["summary"]
    assert len(report["folds"]) == 5 and sum(f["rows"] for f in report["folds"]) == 6000
    assert summary["coverage"]["estimate"] == pytest.approx(0.9, abs=0.015)
    assert summary["coverage"]["low"] < summary["coverage"]["estimate"] < summary["coverage"]["high"]
    assert summary["coverage"]["high"] - summary["coverage"]["low"] < 0.05
    assert all(summary[f"coverage_{c}"]["estimate"] >= 0.87 for c in CLASSES)
    assert 1.0 < summary["mean_set_size"]["estimate"] < 4.0
    assert 0.0 < summary["decided"]["estimate"] < 1.0
    assert summary["decided_accuracy"]["estimate"] > (p.argmax(axis=1) == y).mean() + 0.1  # decided: the easy ones
    assert summary["decided"]["estimate"] == pytest.approx(np.mean([f["decided"] for f in report["folds"]]))
    json.dumps(report, allow_nan=False)


def test_certify_reports_a_class_absent_from_a_fold_and_the_uncertified_classes():
    p, y = calibrated(300, seed=12)
    y[y == 3] = 2
    folds = np.arange(300) % 3
    y[[0, 3, 1]] = 3  # Stone: two studies in fold 0, one in fold 1, none in fold 2
    report = certify(p, y, folds, CLASSES, 0.9, mondrian=True)
    assert [f["uncertified"] for f in report["folds"]] == [["Stone"]] * 3  # at most 3 calibration rows each
    assert report["folds"][2]["coverage_Stone"] is None
    assert report["summary"]["coverage_Stone"]["folds"] == 2
    assert report["folds"][0]["coverage_Stone"] == 1.0  # always in the set when uncertified


def test_set_scores_counts_decisions():
    sets = np.array([[True, False, False, False], [True, True, False, False], [False, False, True, False]])
    scores = set_scores(sets, np.array([0, 1, 3]), CLASSES)
    assert scores["coverage"] == pytest.approx(2 / 3)
    assert scores["mean_set_size"] == pytest.approx(4 / 3)
    assert scores["decided"] == pytest.approx(2 / 3)
    assert scores["decided_accuracy"] == pytest.approx(0.5)
    assert scores["coverage_Cyst"] == 1.0 and scores["coverage_Tumor"] is None and scores["coverage_Stone"] == 0.0


def test_coverage_curve_tracks_each_target_and_sets_grow():
    p, y = calibrated(4000, seed=13)
    curve = coverage_curve(p, y, np.arange(4000) % 4, [0.7, 0.8, 0.9, 0.95])
    assert [row["coverage"] for row in curve] == pytest.approx([0.7, 0.8, 0.9, 0.95], abs=0.02)
    sizes = [row["mean_set_size"] for row in curve]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_randomised_aps_needs_its_rng_at_prediction():
    p, y = calibrated(2000, seed=14)
    calibration = fit_conformal(p, y, 0.9, "aps", rng=np.random.default_rng(0))
    assert calibration.randomized
    with pytest.raises(ValueError, match="rng"):
        prediction_sets(p, calibration)
    p_test, y_test = calibrated(10000, seed=15)
    sets = prediction_sets(p_test, calibration, np.random.default_rng(1))
    assert covered(sets, y_test).mean() == pytest.approx(0.9, abs=0.02)


def test_scores_by_hand():
    p = np.array([[0.5, 0.2, 0.2, 0.1]])
    np.testing.assert_allclose(lac_scores(p), [[0.5, 0.8, 0.8, 0.9]])
    np.testing.assert_allclose(aps_scores(p), [[0.5, 0.9, 0.9, 1.0]])  # ties count in full


@pytest.mark.parametrize("call, message", [
    (lambda p, y: fit_conformal(p, y[:-1], 0.9), "one per row"),
    (lambda p, y: fit_conformal(p[:, 0], y, 0.9), "rows, classes"),
    (lambda p, y: fit_conformal(p, y + 4, 0.9), "class indices"),
    (lambda p, y: fit_conformal(p, y.astype(float), 0.9), "class indices"),
    (lambda p, y: fit_conformal(p, y, 0.0), "strictly between 0 and 1"),
    (lambda p, y: fit_conformal(p, y, 1.0), "strictly between 0 and 1"),
    (lambda p, y: fit_conformal(p, y, 1.5), "strictly between 0 and 1"),
    (lambda p, y: fit_conformal(p, y, 0.9, method="raps"), "unknown conformal method"),
    (lambda p, y: fit_conformal(-p, y, 0.9), "non-negative"),
    (lambda p, y: prediction_sets(p[:, :3], fit_conformal(p, y, 0.9)), "3 classes, the calibration 4"),
    (lambda p, y: certify(p, y, np.zeros(len(y)), CLASSES, 0.9), "at least 2 folds"),
    (lambda p, y: certify(p, y, np.zeros(3), CLASSES, 0.9), "folds must be one per row"),
    (lambda p, y: certify(p, y, np.arange(len(y)) % 2, CLASSES[:3], 0.9), "3 class names"),
    (lambda p, y: ConformalCalibration.from_dict({**fit_conformal(p, y, 0.9).to_dict(), "coverage": 2}),
     "strictly between"),
])
def test_bad_input_is_refused_with_a_clear_message(call, message):
    p, y = calibrated(50, seed=16)
    with pytest.raises(ValueError, match=message):
        call(p, y)


def test_temperature_scaling_recovers_a_known_temperature_and_lowers_ece():
    """Reuses components.common.calibration: the model reports softmax(z) while the truth follows softmax(z / 2)."""
    rng = np.random.default_rng(17)
    logits = rng.normal(0.0, 3.0, (8000, 4))
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    y = sampled_labels(apply_temperature(softmax, 2.0), rng)
    t = fit_temperature(y[:4000], softmax[:4000])
    assert t == pytest.approx(2.0, rel=0.1)
    before = expected_calibration_error(y[4000:], softmax[4000:], bins=15)
    after = expected_calibration_error(y[4000:], apply_temperature(softmax[4000:], t), bins=15)
    assert after < 0.5 * before
