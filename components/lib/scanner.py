"""Copies of prepared slices as another scanner would show them (issue 33): the features stage caches their
features once, so the heads train on augmented copies and the grouped CV scores a shifted copy of each fold.

`shift` is the outside test's shift: a sharper reconstruction kernel (an unsharp mask) and Gaussian noise of 10
grey levels, fixed per slice (seeded). `aug` is a random scanner per slice: kernel sharpness, noise, contrast,
level and a left-right flip. Where the model crops to the body (preprocess.body_crop), the copy is cropped again
after the change, as a scan from that scanner would be.
"""

from __future__ import annotations

import numpy as np

from components.common.imaging import crop_to_body, kernel_shift, resize

COPIES = ("shift", "aug")
SEEDS = {"shift": 1001, "aug": 2002}


def random_scanner(unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A [0, 1] slice through a random scanner: kernel sharpness, noise, contrast and level, and a left-right flip."""
    unit = kernel_shift(unit, rng, sharpen=rng.uniform(0.0, 1.5), noise=rng.uniform(0.0, 12 / 255))
    unit = np.clip((unit - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    return unit[:, ::-1] if rng.random() < 0.5 else unit


def scanner_copy(image: np.ndarray, kind: str, rng: np.random.Generator, body_crop: bool) -> np.ndarray:
    """One uint8 (S, S, 1) slice as `kind` (plain, shift or aug) shows it: the scanner change first, then the
    crop to the body where the model crops."""
    unit = image[..., 0].astype(np.float32) / 255.0
    if kind == "shift":
        unit = kernel_shift(unit, rng)
    elif kind == "aug":
        unit = random_scanner(unit, rng)
    elif kind != "plain":
        raise ValueError(f"unknown copy {kind!r}; choose plain or one of {', '.join(COPIES)}")
    if body_crop:
        unit = resize(crop_to_body(unit), image.shape[0])
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)[..., None]


def copier(kind: str, body_crop: bool, stream: int = 0):
    """A function turning uint8 batches into their `kind` copies, drawing from one seeded random stream (per kind and
    `stream`, e.g. the split), so the same slices get the same copies on every run."""
    rng = np.random.default_rng([SEEDS.get(kind, 0), stream])
    return lambda batch: np.stack([scanner_copy(np.asarray(x), kind, rng, body_crop) for x in batch])
