"""The augmentation policy on tiny images: what each scanner-variation layer does, and that stones survive it."""

import numpy as np
import pytest

from components.augment.core import augment_batch, describe_policy
from components.common.params import AugmentParams

OFF = dict(rotation=0.0, zoom=0.0, contrast=0.0, flip=False)


def stone_images(n: int = 8, size: int = 48) -> np.ndarray:
    """Dark slices, each with one 3x3 'stone' at full brightness near the middle."""
    x = np.full((n, size, size, 1), 0.1, dtype="float32")
    x[:, 22:25, 22:25, 0] = 1.0
    return x


@pytest.mark.parametrize("layer", [{"blur": 1.0}, {"elastic": 0.1}])
def test_blur_and_elastic_change_the_image_but_keep_a_three_pixel_stone(layer):
    x = stone_images()
    out = augment_batch(x, AugmentParams(**OFF, **layer), seed=3)
    assert out.shape == x.shape
    assert np.abs(out - x).max() > 0.05                 # the layer did something
    assert (out.reshape(len(out), -1).max(axis=1) >= 0.5).all()  # and every stone is still the brightest spot


def test_blur_strength_follows_the_sigma_bound():
    x = stone_images()
    mild = augment_batch(x, AugmentParams(**OFF, blur=0.5), seed=0).max(axis=(1, 2, 3))
    strong = augment_batch(x, AugmentParams(**OFF, blur=3.0), seed=0).max(axis=(1, 2, 3))
    assert strong.mean() < mild.mean()


def test_the_policy_description_names_every_active_layer_and_nothing_when_off():
    described = describe_policy(AugmentParams(**OFF, blur=1.0, elastic=0.1))
    assert described["layers"] == ["RandomGaussianBlur", "RandomElasticTransform"]
    assert describe_policy(AugmentParams(**OFF))["layers"] == []


def test_out_of_range_strengths_are_refused():
    with pytest.raises(ValueError):
        AugmentParams(**OFF, blur=-1.0)
    with pytest.raises(ValueError):
        AugmentParams(**OFF, elastic=2.0)


JIT_PROBE = """
import keras
from components.lib.augmentation import augmentation_layers
from components.common.params import AugmentParams
from components.lib.training import compile_model
layers = augmentation_layers(AugmentParams(rotation=0.05, zoom=0.1, contrast=0.2, flip=False, translate=0.05), seed=0)
model = keras.Sequential([keras.Input((16, 16, 1)), *layers, keras.layers.Flatten(), keras.layers.Dense(4)])
compile_model(model, 1e-3, 4)
print(keras.backend.backend(), model.jit_compile, all(layer.supports_jit for layer in layers))
"""


@pytest.mark.parametrize("backend, compiled", [("jax", True), ("tensorflow", False)])
def test_geometric_augmentation_leaves_the_jax_train_step_compiled(backend, compiled):
    """Keras marks RandomRotation/Zoom/Translation un-compilable (a TF limit), which un-jits JAX's whole step.

    Under JAX the layers are let compile and the step is compiled; under TensorFlow they keep their own verdict.
    """
    import os
    import subprocess
    import sys

    from tests.tiny import REPO

    probe = subprocess.run([sys.executable, "-c", JIT_PROBE], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert probe.returncode == 0, probe.stderr[-2000:]
    # printed: backend, whether the train step is compiled, whether every augmentation layer claims it compiles
    assert probe.stdout.split()[-3:] == [backend, str(compiled), str(compiled)]
