"""Leakage core: grouped folds never share a series, and extra scoring variants (TTA) are scored beside the plain."""

import numpy as np
import pytest

from components.common.tta import plain_and_tta, shifted, tta_views
from components.leakage.core import (
    PLAIN,
    fold_variants,
    groups_overlap,
    score_split,
    summarise_folds,
    summarise_variants,
    variant_label,
)
from components.lib.folds import grouped_folds

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def labelled_groups(groups_per_class: int = 4, slices: int = 3):
    y = np.repeat(np.arange(4), groups_per_class * slices)
    groups = np.array([f"c{c}g{i // slices}" for c in range(4) for i in range(groups_per_class * slices)])
    return y, groups


def test_grouped_folds_keep_every_series_on_one_side_and_test_each_image_once():
    y, groups = labelled_groups()
    splits = list(grouped_folds(y, groups, folds=4, val_fraction=0.25, seed=0))
    assert all(not groups_overlap(s, groups) for s in splits)
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested) == list(range(len(y)))


def test_too_few_series_for_the_folds_is_a_clear_error():
    y, groups = labelled_groups(groups_per_class=1)
    with pytest.raises(ValueError, match="5 folds need at least 5 groups"):
        list(grouped_folds(y, groups[:4].repeat(3), folds=5, val_fraction=0.2, seed=0))


def one_hot_guess(labels: np.ndarray, wrong: int = 0) -> np.ndarray:
    """Probabilities that are right except for the first `wrong` images (called the next class)."""
    p = np.eye(4)[labels]
    p[:wrong] = np.eye(4)[(labels[:wrong] + 1) % 4]
    return p


def test_variants_are_scored_beside_the_plain_prediction_and_summarised_over_folds():
    y, groups = labelled_groups()
    splits = list(grouped_folds(y, groups, folds=4, val_fraction=0.25, seed=0))
    fit = lambda s: {PLAIN: one_hot_guess(y[s.test], wrong=3), "tta": one_hot_guess(y[s.test])}  # noqa: E731
    folds = [score_split(fit, s, y, CLASSES) for s in splits]
    assert all(f["variants"]["tta"]["macro_f1"] == 1.0 for f in folds)
    assert all(f["macro_f1"] < 1.0 for f in folds)
    summary = summarise_variants(folds, CLASSES)
    assert summary["tta"]["macro_f1"] == {"mean": 1.0, "std": 0.0}
    plain_only = score_split(lambda s: {PLAIN: one_hot_guess(y[s.test])}, splits[0], y, CLASSES)
    assert "variants" not in plain_only and summarise_variants([plain_only], CLASSES) == {}


def test_each_fold_also_scores_one_verdict_per_series_with_the_evaluate_pooling():
    y, groups = labelled_groups(slices=3)
    splits = list(grouped_folds(y, groups, folds=4, val_fraction=0.25, seed=0))

    def fit(s):  # the first slice of every series is called the wrong class; the other two are right
        first = np.array([i == 0 or groups[i] != groups[i - 1] for i in s.test])
        p = np.eye(4)[y[s.test]] * 0.6 + 0.1
        p[first] = np.eye(4)[(y[s.test][first] + 1) % 4] * 0.6 + 0.1
        return {PLAIN: p, "tta": np.eye(4)[(y[s.test] + 1) % 4]}

    folds = [score_split(fit, s, y, CLASSES, groups, "mean") for s in splits]
    assert all(f["series_macro_f1"] == 1.0 and f["macro_f1"] < 0.8 for f in folds)
    assert all(f["series_count"] == len(set(groups[s.test])) for f, s in zip(folds, splits))
    assert all(f["variants"]["tta"]["series_macro_f1"] == 0.0 for f in folds)
    summary = summarise_folds(folds, CLASSES)
    assert summary["series_macro_f1"] == {"mean": 1.0, "std": 0.0} and "series_accuracy" in summary
    assert "series_macro_f1" not in summarise_folds([score_split(fit, splits[0], y, CLASSES)], CLASSES)


def test_shift_moves_pixels_and_fills_the_border_with_air():
    x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    right = shifted(x, 0, 1)
    assert np.array_equal(right[0, :, 1:, 0], x[0, :, :3, 0]) and not right[0, :, 0].any()
    up = shifted(x, -1, 0)
    assert np.array_equal(up[0, :3, :, 0], x[0, 1:, :, 0]) and not up[0, 3].any()


def test_tta_views_and_their_mean():
    x = np.random.default_rng(0).random((2, 40, 40, 1)).astype("float32")
    assert len(tta_views(x, [])) == 1
    views = tta_views(x, ["flip", "shift"])
    assert len(views) == 6 and np.array_equal(views[1], x[:, :, ::-1])
    # a "model" that only sees the left half: flipping changes its answer, TTA averages the two
    left_mean = lambda b: np.stack([b[:, :, :20].mean(axis=(1, 2, 3)), 1 - b[:, :, :20].mean(axis=(1, 2, 3))], 1)  # noqa: E731
    plain, averaged = plain_and_tta(left_mean, x, ["flip"])
    assert np.array_equal(plain, left_mean(x))
    assert np.allclose(averaged, (left_mean(x) + left_mean(x[:, :, ::-1])) / 2)
    assert np.allclose(averaged.sum(axis=1), 1.0)


def test_an_ensemble_averages_its_members_while_the_plain_score_stays_the_first_models():
    first, second = np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[0.5, 0.5], [0.0, 1.0]])
    tta_first, tta_second = np.array([[0.7, 0.3], [0.5, 0.5]]), np.array([[0.3, 0.7], [0.1, 0.9]])
    single = fold_variants([(first, tta_first)], tta=False)
    assert list(single) == [PLAIN] and single[PLAIN] is first
    both = fold_variants([(first, tta_first), (second, tta_second)], tta=True)
    assert set(both) == {PLAIN, "tta", "ensemble", "ensemble_tta"}
    assert both[PLAIN] is first and both["tta"] is tta_first
    assert np.allclose(both["ensemble"], [[0.7, 0.3], [0.2, 0.8]])
    assert np.allclose(both["ensemble_tta"], [[0.5, 0.5], [0.3, 0.7]])
    assert "ensemble_tta" not in fold_variants([(first, first), (second, second)], tta=False)


def test_variant_labels_read_as_what_was_averaged():
    assert variant_label("tta", "flip+shift", 3) == "TTA (flip+shift)"
    assert variant_label("ensemble", "flip", 3) == "ensemble of 3"
    assert variant_label("ensemble_tta", "flip", 3) == "ensemble of 3 + TTA (flip)"
