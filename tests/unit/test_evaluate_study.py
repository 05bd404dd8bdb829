"""Evaluate's study model (components.evaluate.study): the shifted-fold report and the scanner copies it rests on."""

from __future__ import annotations

import numpy as np

from components.common.study_model import StudyFitSettings
from components.evaluate.study import fit_for_candidate, study_figures
from components.lib.predictions import SplitPredictions

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def out_of_fold(rng: np.random.Generator, series: int = 60, slices: int = 6):
    """Confident, mostly right slice probabilities of `series` series, 5 grouped folds."""
    labels = np.repeat(np.arange(series) % 4, slices)
    logits = rng.normal(0, 1, (len(labels), 4))
    logits[np.arange(len(labels)), labels] += 3.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = np.repeat([f"s{i:03d}" for i in range(series)], slices)
    folds = np.repeat(np.arange(series) % 5, slices)
    return SplitPredictions(labels, p, list(names), list(names), [str(i) for i in range(len(labels))]), folds


def test_a_model_whose_verdicts_fall_apart_on_the_shifted_copy_is_named_not_robust():
    rng = np.random.default_rng(0)
    oof, folds = out_of_fold(rng)
    settings = StudyFitSettings("mean", rule="offsets", coverage=0.9, conformal_method="lac")
    everything_cyst = np.tile([0.05, 0.85, 0.05, 0.05], (len(oof.labels), 1))   # the shift flips every verdict
    model, figures = fit_for_candidate(oof, folds, CLASSES, settings, everything_cyst)
    _, block = study_figures(model, figures, oof, oof, CLASSES, holdout=False)
    assert block["shift"]["plain"]["series_macro_f1"] > 0.9
    assert block["shift"]["shifted"]["series_macro_f1"] < 0.2
    assert block["shift"]["drop"] > 0.7 and block["shift"]["robust"] is False
    assert block["shift"]["shifted"]["recall"]["Cyst"] == 1.0


def test_a_model_the_shift_does_not_move_is_robust():
    rng = np.random.default_rng(1)
    oof, folds = out_of_fold(rng)
    model, figures = fit_for_candidate(oof, folds, CLASSES, StudyFitSettings("learned", rule="temperature", coverage=0.9),
                                       oof.probabilities.copy())
    _, block = study_figures(model, figures, oof, oof, CLASSES, holdout=False)
    assert block["shift"]["drop"] == 0.0 and block["shift"]["robust"] is True
    assert block["conformal"]["measured"]["coverage"] >= 0.85


def test_scanner_copies_are_seeded_shaped_and_cropped_where_the_model_crops():
    from components.lib.scanner import copier, scanner_copy

    rng = np.random.default_rng(2)
    images = (rng.random((3, 32, 32, 1)) * 120 + 60).astype(np.uint8)
    images[:, :4] = 0                                                  # a strip of air above the body
    first, again = copier("shift", False, 0)(images), copier("shift", False, 0)(images)
    assert first.shape == images.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)                       # the same copies on every run
    assert not np.array_equal(first, images)                          # and not the slices themselves
    assert not np.array_equal(copier("shift", False, 1)(images), first)  # another split, another stream
    plain_crop = scanner_copy(images[0], "plain", rng, body_crop=True)
    assert plain_crop.shape == images[0].shape
