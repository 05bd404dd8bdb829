"""Bootstrap over groups: intervals contain the estimate and widen when groups are few."""

import numpy as np

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
