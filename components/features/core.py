"""Pure core of features: batched forward passes of the frozen backbone, and column slices per layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

LAYER_WIDTHS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}  # pooled features per layer


def layer_columns(cached: list[str], wanted: list[str], widths: dict[str, int] = LAYER_WIDTHS) -> np.ndarray:
    """Column indices of `wanted` layers (in that order) in a feature matrix holding `cached` layers side by side."""
    missing = [layer for layer in wanted if layer not in cached]
    if missing:
        raise ValueError(f"features of {missing} are not cached (cached: {cached}); add them to backbone.layers")
    starts = np.cumsum([0] + [widths[layer] for layer in cached])
    return np.concatenate([np.arange(starts[cached.index(w)], starts[cached.index(w) + 1]) for w in wanted])


def extract(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int,
            progress: Callable[[Iterable], Iterable] = lambda it: it) -> np.ndarray:
    """`predict` over (N, S, S, 1) images in batches (memmaps read in order) -> (N, D) float32 features."""
    starts = range(0, len(images), batch_size)
    chunks = [np.asarray(predict(np.asarray(images[i:i + batch_size], dtype="float32")), dtype="float32")
              for i in progress(starts)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype="float32")
