"""Pure core of explain: one prepared slice + a model -> label, probabilities and the overlay image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from components.common.gradcam import gradcam, overlay


@dataclass(frozen=True)
class Explanation:
    label: str
    probabilities: dict[str, float]
    overlay: np.ndarray  # RGB uint8 (H, W, 3)


def explain_pixels(model, pixels: np.ndarray, classes: list[str]) -> Explanation:
    """Classify (size, size) uint8 pixels and draw the Grad-CAM of the predicted class over them."""
    batch = pixels[np.newaxis, ..., np.newaxis].astype(np.float32)
    probs = np.asarray(model(batch, training=False))[0]
    if len(probs) != len(classes):
        raise ValueError(f"the model gives {len(probs)} scores for {len(classes)} classes {classes}")
    top = int(probs.argmax())
    heat = gradcam(model, batch, class_index=top)[0]
    return Explanation(classes[top], {c: float(p) for c, p in zip(classes, probs)}, overlay(pixels, heat))
