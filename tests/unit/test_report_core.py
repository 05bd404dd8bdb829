"""Report core: CIs per class and example picks for Grad-CAM."""

import numpy as np
import pytest

from components.common.bootstrap import group_bootstrap
from components.common.params import ReportParams
from components.lib.metrics import metric_functions
from components.report.core import calibration_summary, pick_examples

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def test_per_class_recall_function_is_that_class_only():
    fns = metric_functions(4, CLASSES)
    y = np.array([0, 0, 3, 3])
    p = np.array([0, 0, 3, 0])
    assert fns["recall_Normal"](y, p) == 1.0
    assert fns["recall_Stone"](y, p) == 0.5
    assert fns["accuracy"](y, p) == 0.75


def test_calibration_and_group_cis_of_one_candidate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    probs = np.full((400, 4), 0.02)
    probs[np.arange(400), np.where(rng.random(400) < 0.6, y, (y + 1) % 4)] = 0.94
    groups = [f"g{i // 10}" for i in range(400)]
    cis = group_bootstrap(y[200:], probs[200:].argmax(1), groups[200:], metric_functions(4, CLASSES), resamples=50)
    assert set(cis) == {"accuracy", "macro_f1", *(f"recall_{c}" for c in CLASSES)}
    acc = cis["accuracy"]
    assert acc["low"] <= acc["estimate"] <= acc["high"] and acc["groups"] == 20
    out = calibration_summary(y[200:], probs[200:], y[:200], probs[:200], ReportParams())
    assert out["temperature"] > 1 and out["ece_after"] < out["ece_before"]


def test_pick_examples_right_and_wrong_per_class():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 1, 0, 1, 1, 0])
    picks = pick_examples(y, p, 4, per_class=1)
    assert (0, 0, True) in picks and (0, 1, False) in picks and (2, 5, False) in picks
    assert not any(c == 3 for c, _, _ in picks)


def test_the_report_reads_evaluates_saved_probabilities_and_refuses_stale_ones(tmp_path):
    import pandas as pd

    from components.common.cli import StageError
    from components.common.params import parse_params
    from components.lib.predictions import SplitPredictions, probability_rows
    from components.report.__main__ import saved_analysis
    from tests.tiny import tiny_params

    params = parse_params(tiny_params(tmp_path))
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 40)
    probs = rng.dirichlet(np.ones(4), 40)
    saved = lambda idx: SplitPredictions(y[idx], probs[idx], ["g"] * len(idx), ["g"] * len(idx),  # noqa: E731
                                         [str(i) for i in idx])
    frame = pd.concat([probability_rows("cnn", "test", saved(np.arange(20)), CLASSES),
                       probability_rows("cnn", "val", saved(np.arange(20, 40)), CLASSES)])
    intervals = {"cnn": {"slice": {"accuracy": {"estimate": 0.3}}, "series": None}}
    out, analysis = saved_analysis(params, "cnn", frame, intervals, y[:20])
    np.testing.assert_allclose(out, probs[:20])
    assert analysis["ci95"] == intervals["cnn"]["slice"] and analysis["temperature"] > 0
    with pytest.raises(StageError, match="do not match the prepared test split"):
        saved_analysis(params, "cnn", frame, intervals, (y[:20] + 1) % 4)
    with pytest.raises(StageError, match="no CIs for candidate 'vit'"):
        saved_analysis(params, "vit", frame, intervals, y[:20])
    with pytest.raises(StageError, match="no test probabilities for candidate 'cnn'"):
        saved_analysis(params, "cnn", frame[frame["split"] == "val"], intervals, y[:20])


def test_under_cv_refit_the_temperature_is_fitted_on_the_out_of_fold_rows_it_scales():
    """Issue 34: a temperature fitted on in-sample validation predictions (near-certain) made the out-of-fold ECE
    worse; cross-fitted on the out-of-fold rows themselves it cannot be fooled by them."""
    from components.common.params import ReportParams
    from components.report.core import calibration_summary

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.2, (3000, 4))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])                   # calibrated out-of-fold predictions
    sure = np.eye(4)[y] * 0.97 + 0.01                                    # in-sample: right and near-certain
    folds = np.arange(3000) % 5
    fooled = calibration_summary(y, p, y, sure, ReportParams())
    honest = calibration_summary(y, p, y, sure, ReportParams(), folds)
    assert fooled["ece_after"] > fooled["ece_before"] + 0.05           # the old way: worse after scaling
    assert honest["ece_after"] <= honest["ece_before"] + 0.02          # cross-fitted: no harm
    assert honest["temperature"] == pytest.approx(1.0, abs=0.15)
    assert honest["temperature_fitted_on"].startswith("out-of-fold")
