"""Pure core of features: batched forward passes of the frozen backbone, and column slices per layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

LAYER_WIDTHS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}  # pooled features per layer


Block = tuple[str, str]  # (layer, pooling): one layer's map pooled one way, LAYER_WIDTHS[layer] columns


def as_block(entry: str | tuple | list) -> Block:
    """`layer3` (its mean pooling, the cache's first format) or (`layer3`, `max`) -> (layer, pooling)."""
    return (entry, "mean") if isinstance(entry, str) else (str(entry[0]), str(entry[1]))


def cached_blocks(layers: list[str], pooling: list[str]) -> list[Block]:
    """The blocks the features stage caches, in column order: every layer, each pooling."""
    return [(layer, p) for layer in layers for p in pooling]


def layer_columns(cached: list, wanted: list, widths: dict[str, int] = LAYER_WIDTHS) -> np.ndarray:
    """Column indices of `wanted` blocks (in that order) in a feature matrix holding `cached` blocks side by side.

    A block is a layer name (its mean pooling) or a (layer, pooling) pair.
    """
    cached, wanted = [as_block(b) for b in cached], [as_block(b) for b in wanted]
    missing = [b for b in wanted if b not in cached]
    if missing:
        names = ", ".join(f"{layer} {p}" for layer, p in missing)
        raise ValueError(f"features of {names} are not cached (cached: {cached}); add them to backbone.layers "
                         "and backbone.pooling")
    starts = np.cumsum([0] + [widths[layer] for layer, _ in cached])
    return np.concatenate([np.arange(starts[cached.index(w)], starts[cached.index(w) + 1]) for w in wanted])


def extract(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int,
            progress: Callable[[Iterable], Iterable] = lambda it: it) -> np.ndarray:
    """`predict` over (N, S, S, 1) images in batches (memmaps read in order) -> (N, D) float32 features."""
    starts = range(0, len(images), batch_size)
    chunks = [np.asarray(predict(np.asarray(images[i:i + batch_size], dtype="float32")), dtype="float32")
              for i in progress(starts)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype="float32")
