"""The study model of one candidate (issues 33/34): fitted on predictions the model was not fitted on, scored on
series it was not fitted on.

cv_refit: the leakage stage's out-of-fold slice probabilities of every labelled series, with their folds; every part
of the study model is cross-fitted over those folds (components.common.study_model), so the series figures and the
conformal certificate are out-of-fold, and the deployed parts are refitted on all of them.
holdout: fitted on the validation split's predictions (its series in grouped folds for the certificate), then
applied to the test split, which gives the honest figures: verdicts, set coverage, set sizes.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

from components.common.calibration import expected_calibration_error
from components.common.conformal import coverage_curve, prediction_sets, set_scores
from components.common.params import Params
from components.common.pooling import POOLINGS, pool_by_series
from components.common.study_model import LEARNED, StudyFitSettings, StudyModel, by_series, fit_study_model

STUDY_FOLDS = 5
MIN_SERIES = 6    # fewer series than this cannot be cross-fitted into folds that each hold several
CURVE_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


class StudyFitError(ValueError):
    """Too little to fit the study model on; the message says what is missing."""


def settings_from(params: Params) -> StudyFitSettings:
    """The study model params ask for: evaluate.series_pooling and decision_rule, predict.conformal_*."""
    return StudyFitSettings(params.evaluate.series_pooling, params.evaluate.decision_rule,
                            params.predict.conformal_coverage, params.predict.conformal_method,
                            params.predict.conformal_mondrian)


def needs_fitting(settings: StudyFitSettings) -> bool:
    return settings.pooling == LEARNED or settings.rule != "none" or settings.coverage is not None


def series_grouped_folds(labels: np.ndarray, series: list[str], folds: int = STUDY_FOLDS, seed: int = 0) -> np.ndarray:
    """A fold per slice, every series in one fold, series stratified by class where each class has enough."""
    order, _, truth = by_series(np.ones((len(labels), 1)), series, labels)
    k = max(2, min(folds, len(order) // 2))
    counts = np.bincount(truth)
    stratify = truth if counts[counts > 0].min() >= k else np.zeros(len(truth), dtype=int)
    fold_of_series = np.zeros(len(order), dtype=int)
    for fold, (_, held) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(order, stratify)):
        fold_of_series[held] = fold
    index = {s: i for i, s in enumerate(order)}
    return np.array([fold_of_series[index[s]] for s in np.asarray(series, dtype=str)])


def fit_for_candidate(fit_on, folds: np.ndarray | None, classes: list[str], settings: StudyFitSettings,
                      shifted: np.ndarray | None = None):
    """(StudyModel, figures) from SplitPredictions `fit_on` (folds: the CV's, or None to make series folds; shifted:
    the same slices' out-of-fold probabilities as a sharper kernel shows them, scored beside)."""
    if not needs_fitting(settings) and shifted is None:
        return StudyModel(settings.pooling), None
    series = np.asarray(fit_on.series, dtype=str)
    count = len(set(series.tolist()))
    if count < MIN_SERIES:
        return too_few_series(fit_on, count, classes, settings), None
    folds = series_grouped_folds(fit_on.labels, series.tolist()) if folds is None else np.asarray(folds)
    return fit_study_model(fit_on.probabilities, fit_on.labels, series, folds, classes, settings, shifted)


def too_few_series(fit_on, count: int, classes: list[str], settings: StudyFitSettings) -> StudyModel:
    """Fewer than MIN_SERIES series to fit on: no series head (refused: it cannot be fitted) and no rule; the
    conformal sets are calibrated on what there is, which with so few series keeps every class in every set:
    each study is referred, the honest answer of a model that cannot certify anything."""
    from components.common.cli import log
    from components.common.conformal import fit_conformal

    if settings.pooling == LEARNED:
        raise StudyFitError(f"{count} series to fit the series head on (evaluate.series_pooling: learned): too few; "
                            f"it needs at least {MIN_SERIES}: add data or use a fixed pooling")
    log.warning("only %d series to fit the study model on: no decision rule, and conformal sets that cannot "
                "exclude any class (every study is referred); add labelled series to certify them", count)
    if settings.coverage is None or count == 0:
        return StudyModel(settings.pooling)
    pooled = pool_by_series(fit_on.probabilities, fit_on.series, settings.pooling)[1]
    truth = by_series(fit_on.probabilities, fit_on.series, fit_on.labels)[2]
    conformal = fit_conformal(pooled, truth, settings.coverage, settings.conformal_method, settings.mondrian)
    return StudyModel(settings.pooling, conformal=conformal,
                      certified={"coverage_target": settings.coverage, "not_certified": f"only {count} series"})


def study_figures(model: StudyModel, figures: dict | None, fit_on, scored_on, classes: list[str],
                  holdout: bool) -> tuple[tuple[list[str], np.ndarray, np.ndarray], dict]:
    """The series verdicts evaluate scores ((order, probabilities, truth)) and the study block of metrics.json.

    cv_refit: the cross-fitted verdicts of `fit_on` (= the out-of-fold predictions); holdout: the study model
    applied to the test split `scored_on`.
    """
    if holdout or figures is None:
        order, pooled, _ = model.by_series(scored_on.probabilities, scored_on.series)
        truth = by_series(scored_on.probabilities, scored_on.series, scored_on.labels)[2]
    else:
        order, pooled, truth = figures["order"], figures["series_probabilities"], figures["labels"]
    block: dict = {"pooling": model.pooling, "rule": model.rule.to_dict() if model.rule else None,
                   "slice_in_series_macro_f1": slice_in_series(order, pooled, scored_on, len(classes))}
    raw_pooling = model.pooling if model.pooling in POOLINGS else "mean"
    raw = pool_by_series(scored_on.probabilities, scored_on.series, raw_pooling)[1]
    block["ece_series"] = {"before": round(expected_calibration_error(truth, raw), 4),
                           "after": round(expected_calibration_error(truth, pooled), 4),
                           "before_is": f"{raw_pooling} of the slice probabilities"}
    if figures is not None and "shift_series_probabilities" in figures:
        block["shift"] = shift_block(pooled, figures["shift_series_probabilities"], truth, classes)
    if model.conformal is not None:
        sets = prediction_sets(pooled, model.conformal)
        measured = set_scores(sets, truth, classes)
        block["conformal"] = {"calibration": model.conformal.to_dict(), "certified": model.certified,
                              "measured_on": "test split (held out)" if holdout else "out-of-fold (cross-fitted)",
                              "measured": measured}
        if figures is not None:
            block["conformal"]["curve"] = coverage_curve(figures["series_probabilities"], figures["labels"],
                                                         figures["folds"], list(CURVE_TARGETS),
                                                         model.conformal.method, model.conformal.mondrian)
    return (order, pooled, truth), block


def slice_in_series(order: list[str], pooled: np.ndarray, scored_on, n_classes: int) -> float:
    """Slice macro-F1 when every slice is judged in its series' context (it takes its series' verdict): what a
    slice's label means in this data, where it is its series' label."""
    from sklearn.metrics import f1_score

    verdict = dict(zip(order, pooled.argmax(axis=1)))
    predicted = [verdict[s] for s in np.asarray(scored_on.series, dtype=str)]
    return round(float(f1_score(scored_on.labels, predicted, labels=list(range(n_classes)), average="macro",
                                zero_division=0)), 4)


MAX_SHIFT_DROP = 0.10  # a series macro-F1 this much lower on the shifted copy names the model as not robust


def shift_block(plain: np.ndarray, shifted: np.ndarray, truth: np.ndarray, classes: list[str]) -> dict:
    """The study verdicts of every fold's test series and of their shifted copy (a sharper kernel + noise): series
    macro-F1 and recall of both, the drop, and whether it passes MAX_SHIFT_DROP."""
    from sklearn.metrics import f1_score, recall_score

    labels = list(range(len(classes)))

    def scores(p: np.ndarray) -> dict:
        recall = recall_score(truth, p.argmax(1), labels=labels, average=None, zero_division=0)
        return {"series_macro_f1": round(float(f1_score(truth, p.argmax(1), labels=labels, average="macro",
                                                        zero_division=0)), 4),
                "recall": {c: round(float(r), 4) for c, r in zip(classes, recall)}}

    before, after = scores(plain), scores(shifted)
    drop = round(before["series_macro_f1"] - after["series_macro_f1"], 4)
    return {"plain": before, "shifted": after, "drop": drop, "max_drop": MAX_SHIFT_DROP,
            "robust": drop <= MAX_SHIFT_DROP,
            "shift": "sharper reconstruction kernel (unsharp mask) + Gaussian noise of 10 grey levels"}
