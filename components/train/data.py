"""Batch feeder: whole batches cut from memory-mapped arrays, no per-image Python on the hot path."""

from __future__ import annotations

import math

import numpy as np


def batch_feeder(x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, *, shuffle: bool, seed: int,
                 first_epoch: int = 0, workers: int = 1, weights: np.ndarray | None = None,
                 sample_by_weight: bool = False, epoch_images: int | None = None):
    """A keras.utils.PyDataset over (N, S, S, 1) uint8 images and integer labels (memmaps welcome).

    Each batch is one vectorised gather (sorted indices, so a memmap reads forward) plus a float32 cast and a
    one-hot lookup. The shuffle order of epoch e depends only on (seed, e): a resumed run sees the same order.
    With `weights`, each batch also carries the images' loss weights, unless `sample_by_weight`: then each
    epoch draws `epoch_images` images (with replacement) with probability proportional to the weights.
    """
    size = epoch_images or len(y)
    draw_by, carried = None, weights  # weights either steer the draw or ride along as loss weights
    if sample_by_weight:
        if weights is None:
            raise ValueError("sampling by weight needs weights")
        draw_by, carried = np.asarray(weights, dtype="float64") / np.sum(weights, dtype="float64"), None
    import keras

    class MemmapBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
            self.epoch = first_epoch
            self.order = self._order()

        def _order(self) -> np.ndarray:
            rng = np.random.default_rng([seed, self.epoch])
            if draw_by is not None:
                return rng.choice(len(y), size=size, replace=True, p=draw_by)
            order = rng.permutation(len(y)) if shuffle else np.arange(len(y))
            return np.resize(order, size)

        def __len__(self) -> int:
            return math.ceil(size / batch_size)

        def __getitem__(self, index: int):
            picks = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            batch = np.asarray(x[picks], dtype="float32"), one_hot(np.asarray(y[picks]), n_classes)
            return batch if carried is None else (*batch, np.asarray(carried[picks], dtype="float32"))

        def on_epoch_end(self) -> None:
            self.epoch += 1
            self.order = self._order()

    if len(y) == 0:
        raise ValueError("no images to feed: the split is empty")
    return MemmapBatches()


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels -> float32 one-hot rows."""
    return np.eye(n_classes, dtype="float32")[y]


def loss_weights(y: np.ndarray, n_classes: int, mode: str, groups: np.ndarray | None = None) -> np.ndarray | None:
    """Per-image loss weights that balance classes (`class`) and, within a class, scan series (`class_and_group`).

    `class`: every class carries the same total weight. `class_and_group`: in addition each image is weighted by
    1/sqrt(its group's size), so a 250-slice series no longer outvotes ten short ones; weights average 1.
    """
    if mode == "none":
        return None
    weights = np.ones(len(y), dtype="float64")
    if mode == "class_and_group":
        if groups is None:
            raise ValueError("loss_weighting class_and_group needs the images' groups")
        _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        weights = 1.0 / np.sqrt(sizes[inverse])
    present = [c for c in range(n_classes) if np.any(y == c)]
    for c in present:
        weights[y == c] *= len(y) / (len(present) * weights[y == c].sum())
    return weights.astype("float32")
