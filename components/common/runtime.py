"""Keras models compiled by OpenVINO for this CPU: the primitive under components.common.inference (the champion's
scorers) and the features stage (the frozen backbone's forward passes). Imports nothing of the project, so a stage
that runs it depends on this file alone."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def openvino_model(model):
    """A Keras model as an in-memory OpenVINO model: the model traced as a TensorFlow function called with
    training=False, so augmentation layers are the identity and leave no random ops behind. (Through
    `model.export(format="tf_saved_model")` instead, the default's compact CNN kept RandomFlip's random ops, which
    OpenVINO cannot convert, and, those removed, its batch normalisation came out wrong: 0.89 on a probability.)"""
    import openvino as ov
    import tensorflow as tf

    specs = [tf.TensorSpec([None, *tensor.shape[1:]], tf.float32) for tensor in model.inputs]
    traced = tf.function(lambda *inputs: model(inputs[0] if len(inputs) == 1 else list(inputs), training=False))
    return ov.convert_model(traced.get_concrete_function(*specs))


def compiled_function(model, precision: str = "f32") -> Callable[[np.ndarray], np.ndarray]:
    """A single-output Keras model compiled by OpenVINO for this CPU (latency hint), as a function of a batch: what
    the features stage runs the frozen backbone with (~1.8x TensorFlow's compiled call on two cores)."""
    import openvino as ov

    compiled = ov.Core().compile_model(openvino_model(model), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision})
    return lambda batch: np.asarray(compiled(np.ascontiguousarray(batch, dtype=np.float32))[0])


def relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest absolute difference of two outputs, relative to the reference's largest magnitude."""
    return float(np.abs(reference - other).max() / max(float(np.abs(reference).max()), 1e-12))
