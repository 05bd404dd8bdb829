"""The augmentation policy: Keras 3 preprocessing layers that training runs inside the model graph (train, leakage,
the augment stage's preview)."""

from __future__ import annotations

import math

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
