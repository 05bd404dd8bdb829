"""Batch feeders: whole batches cut from (memory-mapped) arrays in an order fixed by (seed, epoch).

`batch_feeder` is a Keras PyDataset (any backend, arrays of any size); `tensor_feeder` is the same batches as a
tf.data pipeline, for the TensorFlow backend when the images fit in memory: Keras feeds a PyDataset through a
Python adapter that costs about half an epoch's compute on a 2-core CPU, a tf.data pipeline runs in C++.
"""

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
    draw_by, carried = _draw_and_carry(weights, sample_by_weight)
    import keras

    class MemmapBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=max(4, 2 * workers))
            self.epoch = first_epoch
            self.order = self._order()

        def _order(self) -> np.ndarray:
            return epoch_order(len(y), size, seed, self.epoch, shuffle, draw_by)

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


def _draw_and_carry(weights: np.ndarray | None, sample_by_weight: bool):
    """Weights either steer the draw (normalised to probabilities) or ride along as loss weights."""
    if not sample_by_weight:
        return None, weights
    if weights is None:
        raise ValueError("sampling by weight needs weights")
    return np.asarray(weights, dtype="float64") / np.sum(weights, dtype="float64"), None


def epoch_order(n: int, size: int, seed: int, epoch: int, shuffle: bool, draw_by: np.ndarray | None) -> np.ndarray:
    """The `size` image indices of one epoch, a function of (seed, epoch) only, so a resumed run sees the same."""
    rng = np.random.default_rng([seed, epoch])
    if draw_by is not None:
        return rng.choice(n, size=size, replace=True, p=draw_by)
    order = rng.permutation(n) if shuffle else np.arange(n)
    return np.resize(order, size)


# Above this many bytes of images the tf.data feeder would copy too much into memory: use the memmap feeder.
TENSOR_FEEDER_MAX_BYTES = 1 << 30


def tensor_feeder(x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, *, shuffle: bool, seed: int,
                  first_epoch: int = 0, last_epoch: int | None = None, weights: np.ndarray | None = None,
                  sample_by_weight: bool = False, epoch_images: int | None = None):
    """The batches of `batch_feeder` for epochs first_epoch..last_epoch-1, as one tf.data.Dataset.

    Returns (dataset, steps_per_epoch). The images are held once in memory as uint8; each batch is a gather,
    a float32 cast and a one-hot lookup inside the pipeline. Without `last_epoch` it is one epoch (validation).
    """
    import tensorflow as tf

    if len(y) == 0:
        raise ValueError("no images to feed: the split is empty")
    size = epoch_images or len(y)
    draw_by, carried = _draw_and_carry(weights, sample_by_weight)
    epochs = range(first_epoch, first_epoch + 1 if last_epoch is None else last_epoch)
    steps = math.ceil(size / batch_size)
    # every epoch's order, cut into batches: (epochs x steps) rows of indices, padded with -1 in the last batch
    padded = np.full((len(epochs), steps * batch_size), -1, dtype="int64")
    for row, epoch in enumerate(epochs):
        padded[row, :size] = epoch_order(len(y), size, seed, epoch, shuffle, draw_by)
    batches = padded.reshape(-1, batch_size)
    images, labels = tf.constant(np.asarray(x)), tf.constant(one_hot(np.asarray(y), n_classes))
    extra = () if carried is None else (tf.constant(np.asarray(carried, dtype="float32")),)

    def gather(indices):
        picks = tf.sort(tf.boolean_mask(indices, indices >= 0))
        batch = (tf.cast(tf.gather(images, picks), tf.float32), tf.gather(labels, picks))
        return (*batch, *(tf.gather(w, picks) for w in extra))

    dataset = tf.data.Dataset.from_tensor_slices(batches).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def tensor_feeder_usable(*arrays: np.ndarray) -> bool:
    """Whether `tensor_feeder` can serve these images: the TensorFlow backend and each array within the bound."""
    import keras

    return keras.backend.backend() == "tensorflow" and all(x.nbytes <= TENSOR_FEEDER_MAX_BYTES for x in arrays)


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
