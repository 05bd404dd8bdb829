"""Batch normalisation through TensorFlow's fused kernel while a model trains.

Keras 3 normalises a batch with separate moments and arithmetic ops, each a pass over the feature map, and as many
again in the gradient. Through `tf.compat.v1.nn.fused_batch_norm` an epoch of the default compact CNN took 25-35%
less on two CPU cores (BENCHMARKS.md). The fused kernel computes the same normalisation, batch moments and
gradients; only the training-mode call of each BatchNormalization layer is rerouted, on the layer object, so the
model keeps Keras' own layers: it saves, loads, converts and explains exactly as before, and inference
(training=False) runs Keras' path unchanged.
"""

from __future__ import annotations

from types import MethodType


def fusable(layer, inputs) -> bool:
    """Whether the fused kernel computes what this layer's training call would: a float32 4-D map normalised
    over its last axis, without Keras' extras (renormalisation, cross-replica moments, a mask)."""
    import keras

    return (len(inputs.shape) == 4 and layer.axis in (-1, 3) and keras.backend.standardize_dtype(inputs.dtype) == "float32"
            and not getattr(layer, "renorm", False) and not getattr(layer, "synchronized", False))


def fused_training_call(layer, inputs, training=None, mask=None):
    """A BatchNormalization layer's call, with the training case through `tf.compat.v1.nn.fused_batch_norm`.

    The moving averages are updated as Keras does (momentum, the batch's biased variance). A frozen layer
    (trainable=False) normalises with its moving statistics even in training, as in Keras, and anything the fused
    kernel does not cover: both fall back to the layer's own call.
    """
    import tensorflow as tf

    if not (training and layer.trainable) or mask is not None or not fusable(layer, inputs):
        return type(layer).call(layer, inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    scale = layer.gamma if layer.scale else tf.ones([channels], inputs.dtype)
    offset = layer.beta if layer.center else tf.zeros([channels], inputs.dtype)
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(inputs, scale, offset, epsilon=layer.epsilon,
                                                               data_format="NHWC", is_training=True)
    count = tf.cast(tf.size(inputs) // channels, variance.dtype)
    variance = variance * (count - 1.0) / count  # the kernel returns the unbiased variance; Keras keeps the biased
    momentum = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(layer.moving_variance * momentum + variance * (1.0 - momentum))
    return outputs


def fuse_batch_normalization(model) -> int:
    """Route the training call of every BatchNormalization layer of `model` (nested models too) through the fused
    kernel, when Keras runs on TensorFlow; return how many layers were rerouted (0 on another backend)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return 0
    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.call = MethodType(fused_training_call, layer)
    return len(layers)


def _all_layers(model) -> list:
    """Every layer of a model, descending into nested models."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found
