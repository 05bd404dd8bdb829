"""Pure core of augment: the policy described and previewed on a few images (the layers: components.lib.augmentation)."""

from __future__ import annotations

import numpy as np

from components.common.params import AugmentParams
from components.lib.augmentation import augmentation_layers


def describe_policy(params: AugmentParams) -> dict:
    """A JSON-able description of the policy, for DVC and the report."""
    return {
        "rotation_degrees": round(params.rotation * 360, 2),
        "zoom": params.zoom,
        "contrast": params.contrast,
        "flip": params.flip,
        "translate": params.translate,
        "brightness": params.brightness,
        "noise": params.noise,
        "blur_sigma_max": params.blur,
        "elastic": params.elastic,
        "layers": [layer.__class__.__name__ for layer in augmentation_layers(params, 0)],
        "applied": "inside the model graph during training only",
    }


def augment_batch(images_unit: np.ndarray, params: AugmentParams, seed: int) -> np.ndarray:
    """Apply the policy in training mode to (N, H, W, 1) images in [0, 1]."""
    import keras

    x = keras.ops.convert_to_tensor(images_unit.astype("float32"))
    for layer in augmentation_layers(params, seed):
        x = layer(x, training=True)
    return np.clip(keras.ops.convert_to_numpy(x), 0.0, 1.0)


def pick_preview_images(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """First image of each class present in (x, y), as [0, 1] floats."""
    picks = [int(np.flatnonzero(y == c)[0]) for c in range(n_classes) if np.any(y == c)]
    return x[picks].astype("float32") / 255.0, [int(y[i]) for i in picks]
