"""Conformal prediction sets: per study, the classes that hold the true one with a stated probability.

Split conformal on precomputed probabilities (out-of-fold, one row per series): a nonconformity score per row and
class, a threshold per class from the calibration rows' scores, and the set {classes whose score <= threshold}.
The threshold is read off crepes' conformal p-values (Mondrian bins = the true class when class-conditional), so the
stored number reproduces crepes' decision exactly: it is the ceil((n + 1) * coverage)-th smallest calibration score.
A set of one class is a decision; a larger set means "not sure: refer". `certify` measures the guarantee by grouped
cross-validation over the series. Temperature scaling and ECE live in components.common.calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from crepes import ConformalClassifier
from scipy import stats

METHODS: tuple[str, ...] = ("lac", "aps")
TIE = 1e-9  # p-values equal to 1 - coverage (up to float error) reject, as the exact quantile does


# --- input checks -------------------------------------------------------------------------------------------------

def check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """(rows, classes) float64, finite and non-negative, at least two classes."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (rows, classes) with at least 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or (p.size and p.min() < 0):
        raise ValueError("probabilities must be finite and non-negative")
    return p


def check_labels(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """One integer class index per probability row, each in [0, classes)."""
    y = np.asarray(labels)
    if y.shape != (len(probabilities),):
        raise ValueError(f"labels must be one per row: got shape {y.shape} for {len(probabilities)} rows")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= probabilities.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {probabilities.shape[1]})")
    return y.astype(int)


def check_coverage(coverage: float) -> float:
    if not 0.0 < float(coverage) < 1.0:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
    return float(coverage)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}: one of {', '.join(METHODS)}")
    return method


# --- nonconformity scores -----------------------------------------------------------------------------------------

def lac_scores(probabilities: np.ndarray) -> np.ndarray:
    """LAC: 1 - p of each class, (rows, classes); small when the model backs the class."""
    return 1.0 - check_probabilities(probabilities)


def aps_scores(probabilities: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """APS: per class, the mass of the classes at least as probable as it (itself included), (rows, classes).

    Deterministic by default (ties count in full). With `rng`, randomised APS: the mass of the strictly more probable
    classes plus U(0, 1) times the class's own, one U per row (smaller sets, but not reproducible without the seed).
    """
    p = check_probabilities(probabilities)
    others, own = p[:, None, :], p[:, :, None]  # [row, class, other]
    if rng is None:
        return ((others >= own) * others).sum(axis=2)
    return ((others > own) * others).sum(axis=2) + rng.random((len(p), 1)) * p


def nonconformity(probabilities: np.ndarray, method: str = "lac", rng: np.random.Generator | None = None) -> np.ndarray:
    """Every class's score under `method`, (rows, classes)."""
    if check_method(method) == "lac":
        return lac_scores(probabilities)
    return aps_scores(probabilities, rng)


def label_scores(probabilities: np.ndarray, labels: np.ndarray, method: str = "lac",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The true class's score per row, (rows,): what calibration ranks."""
    p = check_probabilities(probabilities)
    y = check_labels(labels, p)
    return nonconformity(p, method, rng)[np.arange(len(y)), y]


# --- calibration --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConformalCalibration:
    """Thresholds on the nonconformity score, one per class (all equal unless Mondrian), and what they rest on.

    An infinite threshold keeps its class in every set: too few calibration rows to exclude it at this coverage
    (fewer than coverage / (1 - coverage) of them); such classes are listed in `uncertified`.
    """

    method: str
    coverage: float
    mondrian: bool
    thresholds: tuple[float, ...]
    calibration_rows: tuple[int, ...]   # per class
    uncertified: tuple[int, ...] = ()   # class indices whose threshold is infinite
    randomized: bool = False            # randomised APS: prediction_sets needs an rng too

    def __post_init__(self) -> None:
        check_method(self.method)
        check_coverage(self.coverage)
        if len(self.thresholds) != len(self.calibration_rows) or len(self.thresholds) < 2:
            raise ValueError("a calibration needs one threshold and one row count per class (at least 2 classes)")

    def to_dict(self) -> dict:
        """Plain JSON types; an infinite threshold is written as null."""
        return {"method": self.method, "coverage": self.coverage, "mondrian": self.mondrian,
                "thresholds": [None if math.isinf(t) else t for t in self.thresholds],
                "calibration_rows": list(self.calibration_rows), "uncertified": list(self.uncertified),
                "randomized": self.randomized}

    @classmethod
    def from_dict(cls, data: dict) -> ConformalCalibration:
        """The inverse of `to_dict`."""
        return cls(method=str(data["method"]), coverage=float(data["coverage"]), mondrian=bool(data["mondrian"]),
                   thresholds=tuple(math.inf if t is None else float(t) for t in data["thresholds"]),
                   calibration_rows=tuple(int(n) for n in data["calibration_rows"]),
                   uncertified=tuple(int(k) for k in data.get("uncertified", ())),
                   randomized=bool(data.get("randomized", False)))


def crepes_threshold(classifier: ConformalClassifier, scores: np.ndarray, coverage: float,
                     bin_: int | None = None) -> float:
    """The largest score whose crepes p-value (non-smoothed, within `bin_`) exceeds 1 - coverage; inf when even an
    infinite score does, i.e. the bin has too few calibration rows to exclude anything.

    p(s) = (#{calibration >= s} + 1) / (n + 1) falls in steps at the calibration scores, so the answer is one of
    them (or inf): the ceil((n + 1) * coverage)-th smallest.
    """
    candidates = np.append(np.unique(scores), np.inf)
    bins = None if bin_ is None else np.full(len(candidates), bin_)
    p_values = classifier.predict_p(candidates, bins, smoothing=False)
    return float(candidates[p_values > 1.0 - coverage + TIE].max())


def fit_conformal(probabilities: np.ndarray, labels: np.ndarray, coverage: float, method: str = "lac",
                  mondrian: bool = False, rng: np.random.Generator | None = None) -> ConformalCalibration:
    """Calibrate on (rows, classes) probabilities and true labels: marginal, or per true class when `mondrian`.

    Marginal sets hold the true class with probability >= coverage over all studies; Mondrian sets do so within each
    class, so a rare class is not traded away for the common ones.
    """
    p = check_probabilities(probabilities)
    y = check_labels(labels, p)
    coverage, method = check_coverage(coverage), check_method(method)
    n_classes = p.shape[1]
    scores = label_scores(p, y, method, rng)
    if mondrian:
        classifier = ConformalClassifier().fit(scores, bins=y)
        thresholds = tuple(crepes_threshold(classifier, scores[y == k], coverage, k) for k in range(n_classes))
    else:
        classifier = ConformalClassifier().fit(scores)
        thresholds = (crepes_threshold(classifier, scores, coverage),) * n_classes
    return ConformalCalibration(method, coverage, mondrian, thresholds,
                                tuple(int(n) for n in np.bincount(y, minlength=n_classes)),
                                tuple(k for k, t in enumerate(thresholds) if math.isinf(t)), rng is not None)


# --- prediction sets ----------------------------------------------------------------------------------------------

def prediction_sets(probabilities: np.ndarray, calibration: ConformalCalibration,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """(rows, classes) boolean: the classes each row's set holds.

    Never empty: a row whose every score is above its threshold (the model backs no class enough) gets the argmax
    class alone. That only adds classes, so coverage stays >= the guarantee.
    """
    p = check_probabilities(probabilities)
    if p.shape[1] != len(calibration.thresholds):
        raise ValueError(f"probabilities have {p.shape[1]} classes, the calibration {len(calibration.thresholds)}")
    if calibration.randomized != (rng is not None):
        raise ValueError("pass an rng exactly when the calibration used randomised APS")
    sets = nonconformity(p, calibration.method, rng) <= np.asarray(calibration.thresholds)
    empty = ~sets.any(axis=1)
    sets[np.flatnonzero(empty), p[empty].argmax(axis=1)] = True
    return sets


def ranked_members(mask: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> list[str]:
    """One row's set as class names, most probable first."""
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")
    return [classes[k] for k in order if mask[k]]


def set_label(mask: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> str:
    """One row's set as text, most probable first: e.g. "Tumor|Normal"."""
    return "|".join(ranked_members(mask, probabilities, classes))


def refer(mask: np.ndarray) -> np.ndarray:
    """Whether a set (or each of (rows, classes) sets) holds more than one class: not sure, refer to a reader."""
    return np.asarray(mask, dtype=bool).sum(axis=-1) > 1


def set_scores(sets: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Coverage (overall and per true class; None for an absent class), mean set size, the share decided (a set of
    one) and the accuracy of those decisions (None when none is decided)."""
    if len(classes) != sets.shape[1]:
        raise ValueError(f"{len(classes)} class names for sets over {sets.shape[1]} classes")
    y = np.asarray(labels, dtype=int)
    covered = sets[np.arange(len(y)), y]
    size = sets.sum(axis=1)
    decided = size == 1
    scores = {"rows": int(len(y)), "coverage": float(covered.mean()) if len(y) else None}
    scores |= {f"coverage_{c}": float(covered[y == k].mean()) if np.any(y == k) else None
               for k, c in enumerate(classes)}
    return scores | {"mean_set_size": float(size.mean()) if len(y) else None,
                     "decided": float(decided.mean()) if len(y) else None,
                     "decided_accuracy": float(covered[decided].mean()) if decided.any() else None}


# --- certification by grouped cross-validation --------------------------------------------------------------------

def check_folds(folds: np.ndarray, rows: int) -> np.ndarray:
    f = np.asarray(folds)
    if f.shape != (rows,):
        raise ValueError(f"folds must be one per row: got shape {f.shape} for {rows} rows")
    if len(np.unique(f)) < 2:
        raise ValueError("need at least 2 folds: each fold is calibrated on the others")
    return f


def cross_fitted_sets(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, coverage: float,
                      method: str = "lac", mondrian: bool = False) -> tuple[np.ndarray, dict]:
    """Each fold's sets from a calibration on the other folds' rows: ((rows, classes) sets, {fold: calibration})."""
    p = check_probabilities(probabilities)
    y = check_labels(labels, p)
    f = check_folds(folds, len(p))
    sets, calibrations = np.zeros(p.shape, dtype=bool), {}
    for fold in np.unique(f).tolist():
        held = f == fold
        calibrations[fold] = fit_conformal(p[~held], y[~held], coverage, method, mondrian)
        sets[held] = prediction_sets(p[held], calibrations[fold])
    return sets, calibrations


def t_interval(values: list[float | None], level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean over folds with a Student-t interval (None where fewer than two folds have a value), clipped to `bounds`
    (a share cannot leave [0, 1])."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if len(v) == 0:
        return {"estimate": None, "low": None, "high": None, "folds": 0}
    if len(v) < 2:
        return {"estimate": float(v[0]), "low": None, "high": None, "folds": 1}
    half = float(stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    low, high = float(v.mean() - half), float(v.mean() + half)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"estimate": float(v.mean()), "low": low, "high": high, "folds": int(len(v))}


def certify(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, classes: list[str], coverage: float,
            method: str = "lac", mondrian: bool = False, level: float = 0.95) -> dict:
    """The guarantee measured by cross-validation: per fold (calibrated on the others) the `set_scores` and the
    classes left uncertified; per score the mean over folds with a t interval. Rows are series, folds grouped."""
    sets, calibrations = cross_fitted_sets(probabilities, labels, folds, coverage, method, mondrian)
    f, y = np.asarray(folds), np.asarray(labels, dtype=int)
    per_fold = [{"fold": fold, **set_scores(sets[f == fold], y[f == fold], classes),
                 "uncertified": [classes[k] for k in calibration.uncertified]}
                for fold, calibration in calibrations.items()]
    names = [k for k in per_fold[0] if k not in ("fold", "rows", "uncertified")]
    return {"coverage_target": coverage, "method": method, "mondrian": mondrian, "level": level,
            "folds": per_fold, "summary": {k: t_interval([row[k] for row in per_fold], level,
                                                         None if k == "mean_set_size" else (0.0, 1.0))
                                           for k in names}}


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, targets: list[float],
                   method: str = "lac", mondrian: bool = False) -> list[dict]:
    """Per target coverage, the cross-fitted empirical coverage and mean set size (the report's curve)."""
    y = np.asarray(labels, dtype=int)
    curve = []
    for target in targets:
        sets, _ = cross_fitted_sets(probabilities, y, folds, target, method, mondrian)
        curve.append({"target": float(target), "coverage": float(sets[np.arange(len(y)), y].mean()),
                      "mean_set_size": float(sets.sum(axis=1).mean())})
    return curve
