"""Test-time augmentation: class probabilities averaged over label-preserving views of each image."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

View = Literal["flip", "shift"]
SHIFT_FRACTION = 0.03  # of the image side: well inside the training translate range


def shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, H, W, C) images moved by (dy, dx) pixels, the uncovered border filled with zeros (air)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[:, max(-dy, 0):h + min(-dy, 0),
                                                                      max(-dx, 0):w + min(-dx, 0)]
    return out


def tta_views(x: np.ndarray, views: Sequence[View]) -> list[np.ndarray]:
    """The images themselves, then each requested view: a left-right flip, four small shifts."""
    batches = [x]
    if "flip" in views:
        batches.append(x[:, :, ::-1])
    if "shift" in views:
        step = max(1, round(SHIFT_FRACTION * x.shape[2]))
        batches += [shifted(x, dy, dx) for dy, dx in ((0, step), (0, -step), (step, 0), (-step, 0))]
    return batches


def plain_and_tta(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                  views: Sequence[View]) -> tuple[np.ndarray, np.ndarray]:
    """`predict`'s class probabilities for the images, and their mean over the images and their views.

    The plain prediction is the first view's, so each view is predicted once.
    """
    per_view = [np.asarray(predict(batch)) for batch in tta_views(x, views)]
    return per_view[0], np.mean(per_view, axis=0)
