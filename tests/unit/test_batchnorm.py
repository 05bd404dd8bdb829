"""Batch normalisation through TensorFlow's fused kernel: the same step as Keras' own, and a model that stays Keras'."""

import numpy as np
import pytest

from components.lib.batchnorm import fuse_batch_normalization


def small_model(momentum: float = 0.9, center: bool = True):
    import keras

    inputs = keras.Input((12, 10, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(momentum=momentum, center=center, name="bn_map")(x)
    x = keras.layers.GlobalMaxPooling2D()(keras.layers.ReLU()(x))
    x = keras.layers.BatchNormalization(name="bn_vector")(x)  # a 2-D input: Keras' own path
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def train_step(model, x):
    """Output, gradients and moving statistics of one training-mode step."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    moving = [np.asarray(v) for v in model.non_trainable_variables]
    return np.asarray(out), [np.asarray(g) for g in grads], moving


@pytest.mark.parametrize("center", [True, False])
def test_a_fused_step_gives_keras_outputs_gradients_and_moving_statistics(center):
    import keras

    keras.utils.set_random_seed(3)
    keras_model = small_model(center=center)
    fused = keras.Model.from_config(keras_model.get_config())
    fused.set_weights(keras_model.get_weights())
    assert fuse_batch_normalization(fused) == 2
    x = np.random.default_rng(0).normal(2.0, 3.0, (8, 12, 10, 3)).astype("float32")
    expected, actual = train_step(keras_model, x), train_step(fused, x)
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-4, atol=1e-4)
    largest = max(np.abs(g).max() for g in expected[1])  # a gradient that is zero in theory is rounding noise
    for want, got in zip(expected[1], actual[1]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * largest)
    for want, got in zip(expected[2], actual[2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(actual[2][0], 0.0)  # the moving mean did move: the update ran


def test_only_training_calls_on_maps_take_the_fused_kernel():
    import keras

    keras.utils.set_random_seed(4)
    model = small_model()
    x = np.random.default_rng(1).normal(size=(4, 12, 10, 3)).astype("float32")
    own_calls = []  # (layer, training) of every call that went through Keras' own BatchNormalization.call
    original = keras.layers.BatchNormalization.call

    def recording(self, *args, **kwargs):
        own_calls.append((self.name, kwargs.get("training")))
        return original(self, *args, **kwargs)

    keras.layers.BatchNormalization.call = recording
    try:
        fuse_batch_normalization(model)
        model(x, training=True)
        assert own_calls == [("bn_vector", True)]  # the 4-D map went through the fused kernel, the vector did not
        own_calls.clear()
        model(x, training=False)
        assert sorted(own_calls) == [("bn_map", False), ("bn_vector", False)]  # inference: Keras' path unchanged
    finally:
        keras.layers.BatchNormalization.call = original


def test_a_frozen_layer_keeps_its_moving_statistics_in_training_as_in_keras():
    import keras

    keras.utils.set_random_seed(5)
    keras_model = small_model()
    fused = keras.Model.from_config(keras_model.get_config())
    fused.set_weights(keras_model.get_weights())
    for model in (keras_model, fused):
        model.get_layer("bn_map").trainable = False  # a frozen block of a fine-tuned backbone
    fuse_batch_normalization(fused)
    frozen = np.asarray(fused.get_layer("bn_map").moving_mean)
    x = np.random.default_rng(2).normal(2.0, 3.0, (8, 12, 10, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(fused(x, training=True)), np.asarray(keras_model(x, training=True)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fused.get_layer("bn_map").moving_mean), frozen)


def test_a_fused_model_saves_as_plain_keras_layers(tmp_path):
    import keras

    model = small_model()
    fuse_batch_normalization(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("bn_map")) is keras.layers.BatchNormalization
    assert "call" not in vars(loaded.get_layer("bn_map"))
    x = np.ones((2, 12, 10, 3), dtype="float32")
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6)
