"""Pure core of features: batched forward passes of the frozen backbone, and the blocks the cache holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from components.lib.features import Block


def cached_blocks(layers: list[str], pooling: list[str]) -> list[Block]:
    """The blocks the features stage caches, in column order: every layer, each pooling."""
    return [(layer, p) for layer in layers for p in pooling]


def extract(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int,
            progress: Callable[[Iterable], Iterable] = lambda it: it) -> np.ndarray:
    """`predict` over (N, S, S, 1) images in batches (memmaps read in order) -> (N, D) float32 features."""
    starts = range(0, len(images), batch_size)
    chunks = [np.asarray(predict(np.asarray(images[i:i + batch_size], dtype="float32")), dtype="float32")
              for i in progress(starts)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype="float32")
