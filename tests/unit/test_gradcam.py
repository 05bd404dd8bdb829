"""Grad-CAM: shapes, range, nested models, refusal of unsplittable models, and that it finds a planted square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.common.gradcam import GradCamError, find_last_conv_layer, gradcam, overlay

SIZE = 32


def square_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark noise; label 1 images carry a bright 8x8 square at a random place. Returns x, y, square masks."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, SIZE, SIZE, 1)).astype("float32")
    y = np.arange(n) % 2
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, SIZE - 8, 2)
        x[i, r:r + 8, c:c + 8, 0] = 255.0
        masks[i, r:r + 8, c:c + 8] = True
    return x, y, masks


def conv_backbone(name: str = "backbone"):
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="module")
def square_detector():
    """A tiny CNN trained for a few seconds to tell 'bright square' from 'noise only'."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train, y_train, _ = square_images(256)
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    return model


def test_heat_concentrates_on_the_planted_square(square_detector):
    x, y, masks = square_images(16, seed=1)
    with_square = np.flatnonzero(y)
    assert (np.asarray(square_detector(x)).argmax(1) == y).mean() >= 0.9, "the tiny detector did not learn"
    heat = gradcam(square_detector, x[with_square], class_index=1)
    inside = np.array([h[m].mean() for h, m in zip(heat, masks[with_square])])
    outside = np.array([h[~m].mean() for h, m in zip(heat, masks[with_square])])
    assert (inside > 3 * outside).all(), (inside, outside)


def test_shape_range_and_default_layer(square_detector):
    x, _, _ = square_images(5, seed=2)
    assert find_last_conv_layer(square_detector) == "conv2"
    heat = gradcam(square_detector, x)
    assert heat.shape == (5, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() == pytest.approx(1.0)


def test_backbone_nested_inside_a_classifier_is_explained():
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = conv_backbone()(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    assert find_last_conv_layer(model) == "conv_b"
    heat = gradcam(model, square_images(2)[0], class_index=2)
    assert heat.shape == (2, SIZE, SIZE) and 0.0 <= heat.min() and heat.max() <= 1.0


def test_a_head_needing_activations_from_before_the_layer_is_refused_not_explained_wrongly():
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="first")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="second")(a)
    merged = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))  # a skips past "second"
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(merged))
    with pytest.raises(GradCamError, match="plain chain"):
        gradcam(model, square_images(1)[0], layer_name="second")
    assert gradcam(model, square_images(1)[0], layer_name="first").shape == (1, SIZE, SIZE)  # branches after: fine


def test_compact_cnn_with_its_pooling_branches_and_input_windows_is_explained():
    from components.common.params import CandidateParams
    from components.lib.models import build_model

    candidate = CandidateParams(architecture="compact_cnn", filters=[4, 8], dense_units=8, intensity_channels=[0.8])
    model = build_model("compact", candidate, SIZE, 4, [], 0.3, 0.04)
    heat = gradcam(model, square_images(2)[0])
    assert find_last_conv_layer(model) == "conv2b" and heat.shape == (2, SIZE, SIZE)


def test_heat_of_a_model_with_a_roi_lies_inside_the_region_it_looked_at():
    import keras

    from components.common.params import CandidateParams
    from components.lib.models import build_model

    keras.utils.set_random_seed(0)
    candidate = CandidateParams(architecture="compact_cnn", filters=[4, 8], dense_units=8, roi=[0.25, 0.75, 0.0, 0.5])
    model = build_model("roi", candidate, SIZE, 4, [], 0.3, 0.04)
    heat = gradcam(model, square_images(4)[0])
    assert heat.shape == (4, SIZE, SIZE)
    top, bottom, right = SIZE // 4, SIZE * 3 // 4, SIZE // 2
    outside = heat.copy()
    outside[:, top:bottom, :right] = 0.0
    assert outside.max() == 0.0 and heat[:, top:bottom, :right].max() > 0.0


def test_model_without_conv_is_refused():
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(GradCamError, match="no 2-D convolution"):
        find_last_conv_layer(model)


def test_overlay_keeps_cold_pixels_and_colours_hot_ones():
    gray = np.full((4, 4), 100, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    rgb = overlay(gray, heat)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[1:, 1:] == 100).all() and not (rgb[0, 0] == 100).all()
    with pytest.raises(GradCamError):
        overlay(gray, np.zeros((3, 3)))


def test_jax_backend_gives_the_same_heatmap_as_tensorflow(tmp_path):
    """Same saved model, same images: the jax.grad path must agree with the tf.GradientTape path."""
    import os
    import subprocess
    import sys

    import keras

    pytest.importorskip("jax", reason="jax not installed: the JAX Grad-CAM path cannot be checked")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("this comparison runs from the TensorFlow backend")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="c"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "m.keras")
    images = square_images(3, seed=4)[0]
    np.save(tmp_path / "x.npy", images)
    script = ("import numpy as np, keras\nfrom components.common.gradcam import gradcam\n"
              f"m = keras.saving.load_model(r'{tmp_path / 'm.keras'}')\n"
              f"np.save(r'{tmp_path / 'jax.npy'}', gradcam(m, np.load(r'{tmp_path / 'x.npy'}'), class_index=1))\n")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), gradcam(model, images, class_index=1), atol=1e-4)


def test_features_of_another_layer_concatenated_beside_the_explained_one_are_held_not_refused():
    import keras
    import tensorflow as tf

    inputs = keras.Input((SIZE, SIZE, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="first")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="second")(a)
    pooled = [keras.layers.GlobalMaxPooling2D(name="first_max")(a), keras.layers.GlobalAveragePooling2D()(b)]
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Concatenate()(pooled))
    model = keras.Model(inputs, outputs)
    images = square_images(2)[0]
    heat = gradcam(model, images, class_index=1, layer_name="second")
    probe = keras.Model(inputs, [b, outputs])  # the textbook Grad-CAM, on the whole graph at once
    with tf.GradientTape() as tape:
        activations, scores = probe(images)
        picked = scores[:, 1]
    grads = tape.gradient(picked, activations).numpy()
    cams = np.maximum((grads.mean(axis=(1, 2), keepdims=True) * activations.numpy()).sum(-1), 0.0)
    peak = cams.reshape(2, -1).max(axis=1).reshape(-1, 1, 1)
    assert heat.shape == (2, SIZE, SIZE) and np.allclose(heat, np.where(peak > 0, cams / peak, 0), atol=1e-4)


def test_the_split_is_checked_on_a_models_first_call_per_layer_and_a_refused_one_on_every_call(square_detector):
    import keras

    from components.common import gradcam as module

    images = square_images(2)[0]
    whole_calls = []
    original = square_detector.call

    def counted(*args, **kwargs):  # the whole model's own forward pass (the check), not the body or head
        whole_calls.append(1)
        return original(*args, **kwargs)

    first = gradcam(square_detector, images)
    square_detector.call = counted
    try:
        again = gradcam(square_detector, images)
    finally:
        del square_detector.call
    assert whole_calls == [] and np.allclose(first, again)  # checked once for this model and layer
    layers = [layer.name for layer in square_detector.layers if isinstance(layer, keras.layers.Conv2D)]
    assert set(module._FAITHFUL_SPLITS[square_detector]) == {layers[-1]}

    inputs = keras.Input((SIZE, SIZE, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", name="first")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="second")(a)
    merged = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    skipping = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(merged))
    for _ in range(2):  # a refusal is not remembered as a pass
        with pytest.raises(GradCamError, match="plain chain"):
            gradcam(skipping, images[:1], layer_name="second")
