"""Batch feeder: whole batches cut from memory-mapped arrays, no per-image Python on the hot path."""

from __future__ import annotations

import math

import numpy as np


def batch_feeder(x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, *, shuffle: bool, seed: int,
                 first_epoch: int = 0, workers: int = 1):
    """A keras.utils.PyDataset over (N, S, S, 1) uint8 images and integer labels (memmaps welcome).

    Each batch is one vectorised gather (sorted indices, so a memmap reads forward) plus a float32 cast and a
    one-hot lookup. The shuffle order of epoch e depends only on (seed, e): a resumed run sees the same order.
    """
    import keras

    class MemmapBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
            self.epoch = first_epoch
            self.order = self._order()

        def _order(self) -> np.ndarray:
            if not shuffle:
                return np.arange(len(y))
            return np.random.default_rng([seed, self.epoch]).permutation(len(y))

        def __len__(self) -> int:
            return math.ceil(len(y) / batch_size)

        def __getitem__(self, index: int):
            picks = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            return np.asarray(x[picks], dtype="float32"), one_hot(np.asarray(y[picks]), n_classes)

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._order()

    if len(y) == 0:
        raise ValueError("no images to feed: the split is empty")
    return MemmapBatches()


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels -> float32 one-hot rows."""
    return np.eye(n_classes, dtype="float32")[y]
