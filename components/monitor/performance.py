"""The champion on the new labelled cases: its gate metric per slice (CI by bootstrap over series) and per series."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from components.common.bootstrap import group_bootstrap, score_function
from components.common.params import Params
from components.common.pooling import fixed_pooling, series_labels
from components.common.study_model import StudyModel
from components.monitor.core import Performance


def champion_performance(current: pd.DataFrame, classes: Sequence[str], certified: float | None,
                         params: Params, study: StudyModel | None = None) -> Performance | None:
    """None when the new cases carry no label the champion knows."""
    labelled = current[current["label"].isin(classes)]
    if labelled.empty:
        return None
    index = {c: i for i, c in enumerate(classes)}
    y = labelled["label"].map(index).to_numpy(dtype=np.int64)
    probabilities = labelled[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
    series = labelled["series"].astype(str).tolist()
    name = params.evaluate.gate_metric
    metric = score_function(name, len(classes))
    ci = group_bootstrap(y, probabilities.argmax(axis=1), series, {name: metric},
                         resamples=params.report.bootstrap_resamples)[name]
    model = study or StudyModel(fixed_pooling(params.evaluate.series_pooling))
    order, pooled, sets = model.by_series(probabilities, series)
    truth = series_labels(y, series, order)
    series_f1 = metric(truth, pooled.argmax(axis=1))
    coverage = {}
    if model.conformal is not None:
        from scipy.stats import binomtest

        covered = int(sets[np.arange(len(truth)), truth].sum())
        target = model.conformal.coverage
        coverage = {"set_coverage": covered / len(truth), "coverage_target": target,
                    "coverage_p_value": float(binomtest(covered, len(truth), target, alternative="less").pvalue)}
    return Performance(metric=name, score=ci["estimate"], low=ci["low"], high=ci["high"], series_score=series_f1,
                       certified=certified, max_drop=params.monitor.max_f1_drop, cases=len(labelled),
                       series=len(order), alpha=params.monitor.alpha, **coverage)
