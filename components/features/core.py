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


MAX_RELATIVE_DIFF = 1e-3  # the converted backbone against Keras on the first training batch


class RuntimeMismatch(ValueError):
    """The backbone's OpenVINO form does not compute Keras' features; the message gives the figure and the way out."""


def backbone_runtime(model, runtime: str, sample: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], dict | None]:
    """(batch -> features, the conversion's check) of the frozen backbone: TensorFlow's compiled call, or its OpenVINO
    form, used only when its features of `sample` match Keras' within MAX_RELATIVE_DIFF (RuntimeMismatch otherwise)."""
    from components.common.runtime import compiled_function, relative_difference

    keras_predict = lambda batch: np.asarray(model.predict_on_batch(batch))  # noqa: E731
    if runtime == "tensorflow" or not len(sample):
        return keras_predict, None
    converted = compiled_function(model)
    difference = relative_difference(keras_predict(sample), converted(sample))
    if difference > MAX_RELATIVE_DIFF:
        raise RuntimeMismatch(f"the backbone's OpenVINO form differs from Keras by {difference:.2g} (relative) on "
                              f"{len(sample)} training slices, past {MAX_RELATIVE_DIFF:g}: set backbone.runtime: "
                              "tensorflow")
    return converted, {"slices": int(len(sample)), "max_relative_diff": difference, "allowed": MAX_RELATIVE_DIFF}
