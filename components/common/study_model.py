"""The study model: how a series' slice probabilities become its verdict, its calibrated probabilities and its
conformal set. A series head on pooled slice probabilities (issue 33), a decision rule (temperature + per-class
logit offsets) and a conformal calibration (issue 34), all fitted on out-of-fold series predictions.

In the public kidney data a label belongs to the series: a Tumor series holds many slices with no visible tumour.
The slice head sees one slice; the series head sees how a series' slices spread over the classes: each class's
mean, max and top-k mean log-probability (12 numbers for 4 classes), so "a few confident Tumor slices in a
series of Normal-looking ones" is learnable. It is fitted on OUT-OF-FOLD slice probabilities (the slice head never
saw those series), so it learns how the slice head behaves on series it has not seen, as at serving time.

Both are small JSON-serialisable objects carried with the model (registry, Bento, predict, SR).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import f1_score

from components.common.calibration import fit_temperature
from components.common.folded_lr import fit_folded

if TYPE_CHECKING:
    from components.common.conformal import ConformalCalibration

TOP_FRACTION = 0.25   # top-k mean: the k = ceil(25%) most confident slices of the series, per class
EPS = 1e-6


def series_statistics(probabilities: np.ndarray) -> np.ndarray:
    """(slices, K) probabilities of one series -> (3K,) mean, max and top-k mean log-probability per class."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"need (slices, classes) probabilities with at least one slice, got shape {p.shape}")
    logp = np.log(np.clip(p, EPS, 1.0))
    k = max(1, int(np.ceil(TOP_FRACTION * len(p))))
    top = np.sort(logp, axis=0)[-k:].mean(axis=0)
    return np.concatenate([logp.mean(axis=0), logp.max(axis=0), top])


def by_series(probabilities: np.ndarray, series: np.ndarray | list[str],
              labels: np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Series ids (sorted), their (n_series, 3K) statistics and (with `labels`) each series' majority label."""
    names = np.asarray(series, dtype=str)
    if len(names) != len(probabilities):
        raise ValueError(f"{len(names)} series ids for {len(probabilities)} slices")
    order = sorted(set(names.tolist()))
    stats = np.stack([series_statistics(probabilities[names == s]) for s in order])
    if labels is None:
        return order, stats, None
    from components.common.pooling import series_labels

    return order, stats, series_labels(np.asarray(labels), names, order)


@dataclass(frozen=True)
class SeriesHead:
    """Logistic regression on series statistics: standardisation folded in, logits = stats @ kernel + bias."""

    kernel: list[list[float]]   # (3K, K)
    bias: list[float]           # (K,)
    c: float
    series: int                 # series it was fitted on

    @classmethod
    def fit(cls, stats: np.ndarray, labels: np.ndarray, n_classes: int, c: float = 1.0,
            seed: int = 0) -> SeriesHead:
        """Class-balanced multinomial LR; a class absent from `labels` gets a logit it never wins with."""
        if len(stats) != len(labels) or len(stats) < 2:
            raise ValueError(f"need at least 2 series with one label each, got {len(stats)} rows, {len(labels)} labels")
        kernel, bias = fit_folded(stats, labels, n_classes, c, seed, max_iter=5000)
        return cls(kernel.tolist(), bias.tolist(), float(c), int(len(stats)))

    def logits(self, stats: np.ndarray) -> np.ndarray:
        return np.asarray(stats, dtype=np.float64) @ np.asarray(self.kernel) + np.asarray(self.bias)

    def probabilities(self, stats: np.ndarray) -> np.ndarray:
        return softmax(self.logits(stats))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SeriesHead:
        return cls(**data)


@dataclass(frozen=True)
class DecisionRule:
    """probabilities -> softmax(log p / temperature + offsets): calibrated, with per-class thresholds moved."""

    temperature: float = 1.0
    offsets: list[float] = field(default_factory=list)   # (K,) added to the tempered log-probabilities

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0)) / self.temperature
        offsets = np.asarray(self.offsets or [0.0] * logp.shape[-1])
        return softmax(logp + offsets)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecisionRule:
        return cls(float(data.get("temperature", 1.0)), [float(v) for v in data.get("offsets", [])])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


OFFSET_GRID = tuple(np.round(np.linspace(-2.0, 2.0, 21), 2))  # the per-class shifts of the log-probabilities tried


def fit_offsets(probabilities: np.ndarray, labels: np.ndarray, n_classes: int,
                grid: tuple[float, ...] = OFFSET_GRID, rounds: int = 2) -> list[float]:
    """Per-class offsets on the log-probabilities maximising macro-F1 (coordinate ascent over `grid`; the first
    class stays at 0, ties keep the smaller shift, so offsets move only where they buy macro-F1)."""
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0))
    offsets = np.zeros(n_classes)

    def score(candidate: np.ndarray) -> float:
        return float(f1_score(labels, (logp + candidate).argmax(axis=1), labels=list(range(n_classes)),
                              average="macro", zero_division=0))

    best = score(offsets)
    for _ in range(rounds):
        for k in range(1, n_classes):
            for value in sorted(grid, key=abs):
                trial = offsets.copy()
                trial[k] = value
                if (s := score(trial)) > best + 1e-9:
                    best, offsets = s, trial
    return offsets.tolist()


def fit_decision_rule(probabilities: np.ndarray, labels: np.ndarray, n_classes: int,
                      offsets: bool = True) -> DecisionRule:
    """Temperature by likelihood, then (optionally) offsets by macro-F1, both on out-of-fold predictions."""
    t = fit_temperature(np.asarray(labels), np.asarray(probabilities, dtype=np.float64))
    tempered = DecisionRule(t).apply(probabilities)
    return DecisionRule(t, fit_offsets(tempered, labels, n_classes) if offsets else [0.0] * n_classes)


def in_context(slice_probabilities: np.ndarray, series: np.ndarray | list[str], order: list[str],
               series_probabilities: np.ndarray) -> np.ndarray:
    """Each slice's probabilities in its series' context: the series verdict's probabilities (the label of a slice
    in this data is its series' label, so that is what a slice is judged by when its series is known)."""
    index = {s: i for i, s in enumerate(order)}
    return np.asarray(series_probabilities)[[index[s] for s in np.asarray(series, dtype=str)]]


LEARNED = "learned"  # the series pooling that is the series head


@dataclass(frozen=True)
class StudyModel:
    """Slice probabilities of one series -> its verdict probabilities and conformal set, as fitted by evaluate.

    `pooling` is a fixed pooling (components.common.pooling) or "learned" (the series head); the rule and the
    conformal calibration are optional (None: the pooled probabilities and no set, as before issue 33/34).
    """

    pooling: str = "mean"
    series_head: SeriesHead | None = None
    rule: DecisionRule | None = None
    conformal: ConformalCalibration | None = None
    certified: dict = field(default_factory=dict)   # the grouped-CV figures of the sets (a summary, for people)
    slice_conformal: ConformalCalibration | None = None  # sets for one slice sent alone (out-of-fold slices)

    def series_probabilities(self, slice_probabilities: np.ndarray) -> np.ndarray:
        """(slices, K) of one series -> (K,) its calibrated verdict probabilities."""
        from components.common.pooling import pool

        if self.pooling == LEARNED:
            if self.series_head is None:
                raise ValueError("series pooling 'learned' needs a fitted series head: run the evaluate stage (it writes "
                                 "<evaluation>/study/<candidate>.json) or score a registered model")
            pooled = self.series_head.probabilities(series_statistics(slice_probabilities)[None])[0]
        else:
            pooled = pool(slice_probabilities, self.pooling)
        return self.rule.apply(pooled[None])[0] if self.rule is not None else pooled

    def prediction_set(self, series_probabilities: np.ndarray) -> np.ndarray:
        """(K,) -> boolean (K,): the classes the conformal set holds (the argmax alone without a calibration)."""
        from components.common.conformal import prediction_sets

        p = np.asarray(series_probabilities, dtype=np.float64)
        if self.conformal is None:
            return np.arange(len(p)) == p.argmax()
        return prediction_sets(p[None], self.conformal)[0]

    def slice_set(self, probabilities: np.ndarray) -> np.ndarray | None:
        """(K,) probabilities of one slice sent alone -> its conformal set (boolean (K,)); None without a slice
        calibration. A slice's label is its series' label, so a slice set is wider than a study's."""
        from components.common.conformal import prediction_sets

        if self.slice_conformal is None:
            return None
        return prediction_sets(np.asarray(probabilities, dtype=np.float64)[None], self.slice_conformal)[0]

    def by_series(self, probabilities: np.ndarray, series) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Series ids (sorted), their verdict probabilities (S, K) and conformal sets (S, K) boolean."""
        names = np.asarray(series, dtype=str)
        order = sorted(set(names.tolist()))
        pooled = np.stack([self.series_probabilities(probabilities[names == s]) for s in order]) if order else \
            np.zeros((0, probabilities.shape[1]))
        sets = np.stack([self.prediction_set(p) for p in pooled]) if order else np.zeros(pooled.shape, dtype=bool)
        return order, pooled, sets

    def to_dict(self) -> dict:
        return {"pooling": self.pooling,
                "series_head": self.series_head.to_dict() if self.series_head else None,
                "rule": self.rule.to_dict() if self.rule else None,
                "conformal": self.conformal.to_dict() if self.conformal else None,
                "certified": self.certified,
                "slice_conformal": self.slice_conformal.to_dict() if self.slice_conformal else None}

    @classmethod
    def from_dict(cls, data: dict) -> StudyModel:
        from components.common.conformal import ConformalCalibration

        return cls(str(data.get("pooling", "mean")),
                   SeriesHead.from_dict(data["series_head"]) if data.get("series_head") else None,
                   DecisionRule.from_dict(data["rule"]) if data.get("rule") else None,
                   ConformalCalibration.from_dict(data["conformal"]) if data.get("conformal") else None,
                   dict(data.get("certified") or {}),
                   ConformalCalibration.from_dict(data["slice_conformal"]) if data.get("slice_conformal") else None)


@dataclass(frozen=True)
class StudyFitSettings:
    """What evaluate fits (from params: evaluate.series_pooling, evaluate.decision_rule, predict.conformal_*)."""

    pooling: str = "mean"
    rule: str = "none"                     # none | temperature | offsets (temperature + per-class offsets)
    coverage: float | None = None          # None: no conformal sets
    conformal_method: str = "aps"
    mondrian: bool = False
    series_c: float = 1.0


def series_folds(series: np.ndarray, folds: np.ndarray, order: list[str]) -> np.ndarray:
    """Each series' fold (the fold of its first slice; a grouped CV keeps a series in one fold)."""
    first = {}
    for s, f in zip(np.asarray(series, dtype=str).tolist(), np.asarray(folds).tolist()):
        first.setdefault(s, f)
    return np.array([first[s] for s in order])


def fit_study_model(probabilities: np.ndarray, labels: np.ndarray, series: np.ndarray, folds: np.ndarray,
                    classes: list[str], settings: StudyFitSettings,
                    shifted: np.ndarray | None = None) -> tuple[StudyModel, dict]:
    """Fit the study model on out-of-fold slice probabilities, each part cross-fitted over `folds` so the figures it
    returns are out-of-fold too: the series head, then the rule on the head's out-of-fold output, then the conformal
    sets certified on the rule's out-of-fold output. Returns the model (every part refitted on all series) and the
    figures: {series_probabilities, labels, order, folds} of the cross-fitted verdicts and the certificate; with
    `shifted` (the same slices' probabilities as another scanner shows them) also `shift_series_probabilities`,
    pushed through the same fold models."""
    from components.common.conformal import certify, fit_conformal
    from components.common.pooling import pool_by_series

    n = len(classes)
    order, stats, truth = by_series(probabilities, series, labels)
    fold_of = series_folds(series, folds, order)
    views = [stats] + ([by_series(shifted, series)[1]] if shifted is not None else [])
    head = None
    if settings.pooling == LEARNED:
        views = _cross_fitted(fold_of, lambda train: SeriesHead.fit(stats[train], truth[train], n, settings.series_c),
                              lambda model, x: model.probabilities(x), views, n)
        head = SeriesHead.fit(stats, truth, n, settings.series_c)
    else:
        views = [pool_by_series(p, series, settings.pooling)[1]
                 for p in [probabilities] + ([shifted] if shifted is not None else [])]
    rule = None
    if settings.rule not in (None, False, "none"):
        before, offsets = views[0], settings.rule in (True, "offsets")
        views = _cross_fitted(fold_of, lambda train: fit_decision_rule(before[train], truth[train], n, offsets),
                              lambda model, x: model.apply(x), views, n)
        rule = fit_decision_rule(before, truth, n, offsets)
    pooled = views[0]
    conformal = slice_conformal = None
    certificate = slice_certificate = {}
    if settings.coverage is not None:
        certificate = certify(pooled, truth, fold_of, classes, settings.coverage, settings.conformal_method,
                              settings.mondrian)
        conformal = fit_conformal(pooled, truth, settings.coverage, settings.conformal_method, settings.mondrian)
        slice_certificate = certify(probabilities, labels, np.asarray(folds), classes, settings.coverage,
                                    settings.conformal_method, settings.mondrian)
        slice_conformal = fit_conformal(probabilities, labels, settings.coverage, settings.conformal_method,
                                        settings.mondrian)
    certified = _certified_summary(certificate)
    if slice_certificate:
        certified["slice"] = _certified_summary(slice_certificate)
    model = StudyModel(settings.pooling, head, rule, conformal, certified, slice_conformal)
    figures = {"series_probabilities": pooled, "labels": truth, "order": order, "folds": fold_of,
               "certificate": certificate, "slice_certificate": slice_certificate}
    if shifted is not None:
        figures["shift_series_probabilities"] = views[1]
    return model, figures


def _cross_fitted(fold_of: np.ndarray, fit, apply, views: list[np.ndarray], n_classes: int) -> list[np.ndarray]:
    """Each fold's rows of every view (e.g. plain and shifted) through a model fitted on the other folds' rows."""
    out = [np.zeros((len(fold_of), n_classes)) for _ in views]
    for fold in np.unique(fold_of):
        held = fold_of == fold
        model = fit(~held)
        for target, view in zip(out, views):
            target[held] = apply(model, view[held])
    return out


def _certified_summary(certificate: dict) -> dict:
    """The certificate's fold means and intervals, rounded: what travels with the model (registry tag, Bento)."""
    if not certificate:
        return {}
    summary = {k: {"estimate": _round(v["estimate"]), "low": _round(v["low"]), "high": _round(v["high"])}
               for k, v in certificate["summary"].items()}
    return {"coverage_target": certificate["coverage_target"], "method": certificate["method"],
            "mondrian": certificate["mondrian"], "folds": len(certificate["folds"]), "summary": summary}


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
