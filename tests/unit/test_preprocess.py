"""Grouping and splitting: a series never straddles a split; distinct images are not merged."""

import numpy as np
import pytest

from components.common.params import PreprocessParams
from components.lib.grouping import assign_groups, near_duplicate_clusters
from components.lib.prepared import pixel_statistics
from components.preprocess.core import ImageRow, build_prepared
from components.preprocess.split import split_by_group, straddling_groups

WINDOW = {"window_center": 40, "window_width": 400}  # build_prepared takes images already windowed


def series(rng, base: np.ndarray, n: int) -> list[np.ndarray]:
    """n near-identical slices: a base pattern drifting slowly, plus light noise."""
    return [base + 0.02 * i * np.roll(base, 1, axis=0) + rng.normal(0, 0.02, base.shape) for i in range(n)]


def make_series_set(n_series=6, per_series=5, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images, truth = [], []
    for s in range(n_series):
        images += series(rng, rng.normal(0, 1, (size, size)), per_series)
        truth += [s] * per_series
    return np.array(images, dtype=np.float32), np.array(truth)


def test_series_cluster_together_and_distinct_series_stay_apart():
    thumbs, truth = make_series_set()
    clusters = near_duplicate_clusters(thumbs, threshold=0.9)
    for s in set(truth):
        assert len(set(clusters[truth == s])) == 1, "a series was split into several groups"
    assert len(set(clusters)) == len(set(truth)), "distinct series were merged"


def test_patient_key_wins_over_content():
    thumbs, _ = make_series_set(n_series=2, per_series=2)
    groups = assign_groups(["p-a", "p-a", "p-b", ""], thumbs, threshold=0.9)
    assert groups[:3] == ["p-a", "p-a", "p-b"]
    assert groups[3].startswith("dup-")


@pytest.mark.parametrize("seed", range(5))
def test_split_is_grouped_and_stratified(seed):
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label in ["Normal", "Cyst", "Tumor", "Stone"]:
        for g in range(6):
            n = int(rng.integers(2, 9))
            labels += [label] * n
            groups += [f"{label}-{g}"] * n
    splits = split_by_group(labels, groups, test_fraction=0.25, val_fraction=0.2, seed=seed)
    assert straddling_groups(groups, splits) == []
    for label in set(labels):
        sides = {s for lab, s in zip(labels, splits) if lab == label}
        assert sides == {"train", "val", "test"}, f"{label} missing a split"
    test_share = splits.count("test") / len(splits)
    assert 0.1 < test_share < 0.45


def test_split_is_deterministic_by_seed_and_the_seed_matters():
    labels = [label for label in "ABCD" for _ in range(24)]
    groups = [f"{label}{i // 3}" for label in "ABCD" for i in range(24)]  # 8 groups of 3 per class
    first = split_by_group(labels, groups, 0.25, 0.2, seed=11)
    assert split_by_group(labels, groups, 0.25, 0.2, seed=11) == first
    assert len({tuple(split_by_group(labels, groups, 0.25, 0.2, seed=s)) for s in range(5)}) > 1


def test_a_class_with_one_group_stays_in_train():
    labels = ["A"] * 3 + ["B"] * 6
    groups = ["a1"] * 3 + ["b1", "b1", "b2", "b2", "b3", "b3"]
    splits = split_by_group(labels, groups, 0.3, 0.3, seed=0)
    assert set(splits[:3]) == {"train"}
    assert straddling_groups(groups, splits) == []


def test_straddling_detects_leaks():
    assert straddling_groups(["g1", "g1", "g2"], ["train", "test", "val"]) == ["g1"]


def test_build_prepared_packs_arrays_per_split():
    thumbs, truth = make_series_set(n_series=12, per_series=3, size=8)
    classes = ["Normal", "Cyst", "Tumor", "Stone"]
    rows = [ImageRow(key=f"k{i}", label=classes[s % 4], group="") for i, s in enumerate(truth)]
    images = np.random.default_rng(0).integers(0, 255, (len(rows), 8, 8), dtype=np.uint8)
    prepared = build_prepared(rows, images, thumbs, classes, PreprocessParams(image_size=8, duplicate_threshold=0.9, **WINDOW))
    assert sum(len(y) for _, y in prepared.arrays.values()) == len(rows)
    x_train, y_train = prepared.arrays["train"]
    assert x_train.shape[1:] == (8, 8, 1) and x_train.dtype == np.uint8
    assert set(y_train.tolist()) == {0, 1, 2, 3}
    assert prepared.summary["groups"] == 12 and prepared.summary["group_source"] == "near-duplicate"
    assert straddling_groups([r["group"] for r in prepared.table], [r["split"] for r in prepared.table]) == []


def test_unknown_label_is_refused():
    rows = [ImageRow("k", "Banana", "")]
    with pytest.raises(ValueError, match="Banana"):
        build_prepared(rows, np.zeros((1, 8, 8), np.uint8), np.zeros((1, 4, 4), np.float32), ["A", "B"],
                       PreprocessParams(image_size=8, duplicate_size=4, **WINDOW))


def test_pixel_statistics_on_unit_scale():
    x = np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1)
    mean, variance = pixel_statistics(x)
    assert mean == pytest.approx(0.5) and variance == pytest.approx(0.25)
    with pytest.raises(ValueError, match="empty"):
        pixel_statistics(np.zeros((0, 4, 4, 1), np.uint8))
