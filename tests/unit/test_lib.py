"""components.lib on tiny fixtures: the one frozen-head fit train and leakage share, and the prepared arrays' counts."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np

from components.lib.heads import fit_frozen_head, fit_head, is_frozen_backbone
from components.lib.prepared import SPLITS, split_counts


def test_the_frozen_head_fit_is_fit_head_with_the_candidates_c_choices_timed_and_logged(caplog):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    f = y[:, None] * 3.0 + rng.normal(0, 1, (90, 4))
    candidate = SimpleNamespace(head_c=[0.01, 1.0])
    with caplog.at_level(logging.INFO, logger="kidney_ct"):
        head = fit_frozen_head(candidate, f[:60], y[:60], f[60:], y[60:], n_classes=3, seed=0)
    same = fit_head(f[:60], y[:60], f[60:], y[60:], 3, [0.01, 1.0], 0)
    assert head.c == same.c and np.allclose(head.kernel, same.kernel) and np.allclose(head.bias, same.bias)
    assert set(head.val_macro_f1) == {0.01, 1.0} and head.seconds > 0
    assert any("picked by validation macro-F1" in r.getMessage() for r in caplog.records)


def test_only_a_frozen_ct_resnet152_is_a_frozen_backbone():
    assert is_frozen_backbone(SimpleNamespace(architecture="ct_resnet152", trainable="frozen"))
    assert not is_frozen_backbone(SimpleNamespace(architecture="ct_resnet152", trainable="all"))
    assert not is_frozen_backbone(SimpleNamespace(architecture="compact_cnn", trainable="frozen"))


def test_split_counts_reads_each_splits_labels(tmp_path):
    for n, split in zip((5, 2, 3), SPLITS):
        np.save(tmp_path / f"y_{split}.npy", np.zeros(n, dtype="int64"))
    assert split_counts(tmp_path) == {"train": 5, "val": 2, "test": 3}
