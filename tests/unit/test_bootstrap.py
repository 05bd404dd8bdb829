"""Bootstrap over groups: intervals contain the estimate and widen when groups are few."""

import numpy as np
import pytest

from components.common.bootstrap import group_bootstrap


def accuracy(y, p):
    return float(np.mean(y == p))


def data(n_groups, per_group, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_groups * per_group)
    right = np.repeat(rng.random(n_groups) < 0.7, per_group)  # a group is all right or all wrong
    return y, np.where(right, y, 1 - y), [f"g{i}" for i in np.repeat(np.arange(n_groups), per_group)]


def test_interval_contains_estimate_and_is_reproducible():
    y, p, groups = data(30, 10)
    first = group_bootstrap(y, p, groups, {"accuracy": accuracy}, resamples=300, seed=1)["accuracy"]
    again = group_bootstrap(y, p, groups, {"accuracy": accuracy}, resamples=300, seed=1)["accuracy"]
    assert first == again
    assert first["low"] <= first["estimate"] <= first["high"]
    assert first["groups"] == 30


def test_group_resampling_is_wider_than_image_resampling_for_correlated_images():
    y, p, groups = data(20, 25)
    by_group = group_bootstrap(y, p, groups, {"accuracy": accuracy}, resamples=400)["accuracy"]
    by_image = group_bootstrap(y, p, [str(i) for i in range(len(y))], {"accuracy": accuracy}, resamples=400)["accuracy"]
    assert (by_group["high"] - by_group["low"]) > 2 * (by_image["high"] - by_image["low"])


def test_fast_scores_equal_sklearns_on_every_kind_of_sample():
    """macro_f1 / class_recall / score_function are sklearn's numbers (labels=all classes, zero_division=0),
    also when a class is absent from the truth, from the predictions, or from both."""
    from sklearn.metrics import f1_score, recall_score

    from components.common.bootstrap import class_recall, macro_f1, score_function

    rng = np.random.default_rng(7)
    samples = [(rng.integers(0, 4, 50), rng.integers(0, 4, 50)),
               (rng.integers(0, 3, 40), rng.integers(1, 4, 40)),   # class 3 never true, class 0 never predicted
               (np.array([2, 2, 2]), np.array([2, 2, 2])),         # two classes absent everywhere
               (np.array([0, 1]), np.array([1, 0]))]               # all wrong
    for y, p in samples:
        assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, labels=range(4), average="macro", zero_division=0))
        assert score_function("macro_f1", 4)(y, p) == macro_f1(y, p, 4)
        assert score_function("accuracy", 4)(y, p) == np.mean(y == p)
        for k in range(4):
            assert class_recall(y, p, 4, k) == pytest.approx(recall_score(y, p, labels=[k], average="macro",
                                                                          zero_division=0))
