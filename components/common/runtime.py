"""Keras models compiled by OpenVINO for this CPU: the primitive under components.common.inference (the champion's
scorers) and the features stage (the frozen backbone's forward passes). Imports nothing of the project, so a stage
that runs it depends on this file alone."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import numpy as np


def openvino_model(model):
    """A Keras model as an in-memory OpenVINO model (through a SavedModel, TensorFlow's export of its graph)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="kidney-ct-convert-") as tmp:
        model.export(f"{tmp}/saved_model", format="tf_saved_model", verbose=False)
        return ov.convert_model(f"{tmp}/saved_model")


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
