"""The series head and the decision rule (components.common.study_model) on synthetic series with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from components.common.pooling import pool_by_series
from components.common.study_model import (
    DecisionRule,
    SeriesHead,
    by_series,
    fit_decision_rule,
    in_context,
    series_statistics,
)


def synthetic_series(n_series: int, rng: np.random.Generator, slices: int = 20, lesion_share: float = 0.2):
    """Normal (0) and Tumor (1) series whose slices look alike except a few confident lesion slices in a Tumor
    series: the slice alone cannot tell a Tumor series' ordinary slice from a Normal one, its series can."""
    probabilities, series, labels = [], [], []
    for s in range(n_series):
        label = s % 2
        p_tumor = rng.uniform(0.1, 0.35, slices)            # every ordinary slice: looks Normal
        if label == 1:
            lesion = rng.choice(slices, int(lesion_share * slices), replace=False)
            p_tumor[lesion] = rng.uniform(0.75, 0.95, len(lesion))
        else:                                                # a Normal series has one mildly suspicious slice
            p_tumor[rng.integers(slices)] = rng.uniform(0.35, 0.6)
        probabilities.append(np.stack([1 - p_tumor, p_tumor], axis=1))
        series += [f"s{s:03d}"] * slices
        labels += [label] * slices
    return np.concatenate(probabilities), np.array(series), np.array(labels)


def test_series_head_separates_what_only_the_series_context_separates():
    rng = np.random.default_rng(0)
    p_fit, s_fit, y_fit = synthetic_series(60, rng)
    p_new, s_new, y_new = synthetic_series(40, rng)
    _, stats, truth = by_series(p_fit, s_fit, y_fit)
    head = SeriesHead.fit(stats, truth, n_classes=2)
    order, new_stats, new_truth = by_series(p_new, s_new, y_new)
    learned = (head.probabilities(new_stats).argmax(1) == new_truth).mean()
    pooled = (pool_by_series(p_new, s_new, "mean")[1].argmax(1) == new_truth).mean()
    slice_alone = (p_new.argmax(1) == y_new).mean()
    assert learned >= 0.95
    assert pooled <= 0.6 and slice_alone <= 0.7          # the mean of slices and the slice alone cannot
    in_series = in_context(p_new, s_new, order, head.probabilities(new_stats))
    assert (in_series.argmax(1) == y_new).mean() >= 0.95  # every slice judged by its series
    assert SeriesHead.from_dict(head.to_dict()) == head


def test_series_statistics_are_mean_max_and_top_k_log_probabilities():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.6, 0.4]])
    stats = series_statistics(p)
    np.testing.assert_allclose(stats[:2], np.log(p).mean(0))
    np.testing.assert_allclose(stats[2:4], np.log(p).max(0))
    np.testing.assert_allclose(stats[4:], np.log(p).max(0))  # k = ceil(0.25 * 4) = 1: the top slice
    with pytest.raises(ValueError, match="at least one slice"):
        series_statistics(np.zeros((0, 2)))
    with pytest.raises(ValueError, match="series ids"):
        by_series(p, ["a", "b"])


def test_the_rule_s_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, (4000, 4))
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p_true])
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    assert fit_decision_rule(overconfident, labels, 4, offsets=False).temperature == pytest.approx(3.0, rel=0.1)


def test_offsets_recover_a_class_the_model_underrates():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 3000)
    logits = rng.normal(0, 1, (3000, 3))
    logits[np.arange(3000), labels] += 2.0
    logits[:, 2] -= 2.5                                 # class 2 is systematically underrated
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rule = fit_decision_rule(p, labels, 3)
    before = (p.argmax(1)[labels == 2] == 2).mean()
    after = (rule.apply(p).argmax(1)[labels == 2] == 2).mean()
    assert rule.offsets[2] > 1.0 and after > before + 0.3
    assert DecisionRule.from_dict(rule.to_dict()) == rule
    np.testing.assert_allclose(DecisionRule().apply(p), p, atol=1e-6)  # the identity rule changes nothing


def test_fit_study_model_cross_fits_every_part_and_certifies_the_sets():
    from components.common.study_model import LEARNED, StudyFitSettings, StudyModel, fit_study_model

    rng = np.random.default_rng(3)
    p, s, y = synthetic_series(200, rng)
    order = sorted(set(s))
    fold_of_series = {name: i % 5 for i, name in enumerate(order)}
    folds = np.array([fold_of_series[name] for name in s])
    settings = StudyFitSettings(pooling=LEARNED, rule="offsets", coverage=0.9, conformal_method="lac")
    model, figures = fit_study_model(p, y, s, folds, ["Normal", "Tumor"], settings)
    assert figures["order"] == order and len(figures["series_probabilities"]) == 200
    cross_fitted = (figures["series_probabilities"].argmax(1) == figures["labels"]).mean()
    assert cross_fitted >= 0.95                      # out-of-fold verdicts of the learned head
    coverage = figures["certificate"]["summary"]["coverage"]["estimate"]
    assert 0.85 <= coverage <= 1.0                   # the 0.9 target, measured on held-out folds
    assert model.certified["coverage_target"] == 0.9
    again = StudyModel.from_dict(model.to_dict())
    first = s == order[0]
    np.testing.assert_allclose(again.series_probabilities(p[first]), model.series_probabilities(p[first]))
    assert again.prediction_set(model.series_probabilities(p[first])).sum() >= 1


def test_a_flat_series_gets_a_wider_set_than_a_clear_one():
    from components.common.study_model import StudyFitSettings, fit_study_model

    rng = np.random.default_rng(4)
    p, s, y = synthetic_series(200, rng)
    folds = np.array([int(name[1:]) % 5 for name in s])
    model, _ = fit_study_model(p, y, s, folds, ["Normal", "Tumor"],
                               StudyFitSettings(pooling="max", coverage=0.95, conformal_method="lac"))
    clear = np.tile([[0.05, 0.95]], (20, 1))
    ambiguous = np.tile([[0.5, 0.5]], (20, 1))
    assert model.prediction_set(model.series_probabilities(clear)).sum() == 1
    assert model.prediction_set(model.series_probabilities(ambiguous)).sum() == 2
