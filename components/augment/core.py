"""The augmentation policy: Keras 3 preprocessing layers that training runs inside the model graph."""

from __future__ import annotations

import math

import numpy as np

from components.common.params import AugmentParams


def augmentation_layers(params: AugmentParams, seed: int) -> list:
    """Geometry, intensity, noise, blur and elastic layers on [0, 1] images; inactive at inference."""
    import keras

    layers = []
    if params.rotation > 0:
        layers.append(keras.layers.RandomRotation(params.rotation, fill_mode="constant", seed=seed, name="aug_rotation"))
    if params.zoom > 0:
        layers.append(keras.layers.RandomZoom((-params.zoom, params.zoom), fill_mode="constant", seed=seed + 1,
                                              name="aug_zoom"))
    if params.contrast > 0:
        layers.append(keras.layers.RandomContrast(params.contrast, value_range=(0.0, 1.0), seed=seed + 2,
                                                  name="aug_contrast"))
    if params.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 3, name="aug_flip"))
    if params.translate > 0:
        layers.append(keras.layers.RandomTranslation(params.translate, params.translate, fill_mode="constant",
                                                     seed=seed + 4, name="aug_translate"))
    if params.brightness > 0:
        layers.append(keras.layers.RandomBrightness(params.brightness, value_range=(0.0, 1.0), seed=seed + 5,
                                                    name="aug_brightness"))
    if params.noise > 0:
        layers.append(keras.layers.GaussianNoise(params.noise, seed=seed + 6, name="aug_noise"))
    if params.blur > 0:
        layers.append(keras.layers.RandomGaussianBlur(1.0, kernel_size=2 * math.ceil(2 * params.blur) + 1,
                                                      sigma=(0.01, params.blur), value_range=(0.0, 1.0),
                                                      seed=seed + 7, name="aug_blur"))
    if params.elastic > 0:
        layers.append(keras.layers.RandomElasticTransform(1.0, scale=(0.0, params.elastic), fill_mode="constant",
                                                          value_range=(0.0, 1.0), seed=seed + 8, name="aug_elastic"))
    return allow_jit_on_jax(layers)


def allow_jit_on_jax(layers: list) -> list:
    """Let JAX compile the training step although the geometric layers say they cannot be compiled.

    RandomRotation, RandomZoom and RandomTranslation declare `supports_jit = False` because TensorFlow's
    projective-transform kernel has no XLA version; Keras then runs the WHOLE train step op by op. Under JAX
    their transform is `map_coordinates`, which compiles: measured on an H100, the compact CNN's step of 16
    images went from 520 ms un-compiled to 10-16 ms with validation, three CVs sharing the GPU (BENCHMARKS.md).
    TensorFlow keeps the layers' own verdict.
    """
    import keras

    if keras.backend.backend() == "jax":
        for layer in layers:
            layer.supports_jit = True
    return layers


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
