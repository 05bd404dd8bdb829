"""Pure core of the monitor: which images are new, series-level tables, the drift findings and the verdict.

Slices of one scan series are near-duplicates, so every drift test compares series (each series' mean
summary, its majority label, its pooled verdict, its mean embedding), not images: image-level tests would
count one patient many times and call chance differences drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.monitor.summaries import CATEGORICAL_SUMMARIES, NUMERIC_SUMMARIES

ALERTING = ("drift", "degraded")
EMBEDDING_PREFIX = "emb_"


@dataclass(frozen=True)
class Finding:
    """One column's drift test: is the shift real (p-value under the pass's share of alpha) and does it matter
    (a distance at least the minimum)? Embeddings: a domain classifier's ROC AUC against chance."""

    column: str
    test: str  # e.g. "K-S p_value", "chi-square homogeneity p_value (permutation)", "domain classifier ROC AUC vs chance"
    p_value: float  # NaN where the test gives none (embeddings: `significant` says it)
    alpha: float  # this test's share of monitor.alpha
    distance_name: str
    distance: float
    min_distance: float
    significant: bool

    @property
    def drifted(self) -> bool:
        return self.significant and self.distance >= self.min_distance

    def line(self) -> str:
        flag = "DRIFT" if self.drifted else "ok"
        p = "" if self.p_value != self.p_value else f"p {self.p_value:.2g} (alpha {self.alpha:.2g}), "
        return f"{self.column}: {p}{self.distance_name} {self.distance:.3f} (min {self.min_distance:g}) {flag}"

    def record(self) -> dict:
        """The finding for monitor.json: no p-value where the test gives none (null, not NaN)."""
        p_value = None if self.p_value != self.p_value else self.p_value
        return {**vars(self), "p_value": p_value, "drifted": self.drifted}


@dataclass(frozen=True)
class Performance:
    """The champion on the new labelled cases against the figure it was certified with."""

    metric: str  # the gate metric (evaluate.gate_metric): the figure the champion was certified with
    score: float
    low: float
    high: float
    series_score: float
    certified: float | None
    max_drop: float
    cases: int
    series: int
    set_coverage: float | None = None       # share of new labelled series whose conformal set holds the label
    coverage_target: float | None = None    # the coverage the sets were certified at
    coverage_p_value: float | None = None   # one-sided binomial test: this few covered if the target held
    alpha: float = 0.01

    @property
    def coverage_broken(self) -> bool:
        """The sets cover clearly less than certified on the new series: the guarantee no longer holds here."""
        return self.coverage_p_value is not None and self.coverage_p_value < self.alpha

    @property
    def degraded(self) -> bool:
        """Clearly below its certificate: more than max_drop under it, and the upper 95% bound under it too; or its
        conformal sets clearly under their certified coverage."""
        if self.coverage_broken:
            return True
        if self.certified is None:
            return False
        return self.score < self.certified - self.max_drop and self.high < self.certified


@dataclass(frozen=True)
class Verdict:
    status: str  # no champion | no new data | too few new series | no drift | drift | degraded
    reasons: list[str] = field(default_factory=list)

    @property
    def alert(self) -> bool:
        return self.status in ALERTING


def new_keys(manifest_keys: Iterable[str], reference_keys: Iterable[str]) -> list[str]:
    """Keys ingested since the champion's data was recorded, sorted."""
    return sorted(set(manifest_keys) - set(reference_keys))


def sample_by_series(rows: pd.DataFrame, max_images: int, seed: int = 0) -> pd.DataFrame:
    """Whole series drawn at random until `max_images` would be exceeded (all rows when they fit)."""
    if len(rows) <= max_images:
        return rows
    order = np.random.default_rng(seed).permutation(sorted(rows["series"].unique()))
    sizes = rows.groupby("series").size()
    kept, total = [], 0
    for series in order:
        if total + sizes[series] > max_images and kept:
            continue
        kept.append(series)
        total += sizes[series]
    return rows[rows["series"].isin(kept)]


def reference_rows(reference: pd.DataFrame, max_images: int) -> pd.DataFrame:
    """The champion's reference images: every labelled one (fitted or held out), whole series drawn at random when
    there are more than `max_images` (the sample is described once per registered version, so it can be all)."""
    return sample_by_series(reference[["key", "label", "series"]], max_images)


def with_heldout_outputs(images: pd.DataFrame, heldout: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """The reference's outputs (p_<class>, predicted, confidence) from predictions on slices the champion was not
    fitted on: a held-out row gets its own, the others none (their summaries and embeddings still count)."""
    columns = [f"p_{c}" for c in classes]
    images = images.copy()
    known = heldout.drop_duplicates("key").set_index("key")[columns].astype(float)
    outputs = known.reindex(images["key"]).to_numpy(dtype=float)
    images[columns] = outputs
    scored = ~np.isnan(outputs).any(axis=1)
    images["predicted"] = pd.Series([classes[i] if ok else None for i, ok in zip(
        np.nan_to_num(outputs).argmax(axis=1), scored)], index=images.index, dtype=object)
    images["confidence"] = np.where(scored, np.nan_to_num(outputs).max(axis=1), np.nan)
    return images


def series_table(images: pd.DataFrame) -> pd.DataFrame:
    """One row per series: mean numeric summaries, confidence and embedding, first header value, majority label
    and verdict (the verdict is the series' pooled prediction, already in `series_verdict`)."""
    numeric = [c for c in images.columns if c in NUMERIC_SUMMARIES or c in ("confidence", "set_size")
               or c.startswith(EMBEDDING_PREFIX)]
    first = [c for c in (*CATEGORICAL_SUMMARIES, "series_verdict") if c in images.columns]
    grouped = images.groupby("series", sort=True)
    table = grouped[numeric].mean().join(grouped[first].first())
    if "label" in images.columns and images["label"].notna().any():
        table["label"] = grouped["label"].agg(lambda s: s.value_counts().sort_index().idxmax())
    return table.reset_index()


def homogeneity_p_value(reference: Sequence, current: Sequence, alpha: float = 0.01, seed: int = 0) -> float:
    """Do two samples of categories come from one distribution? The chi-square statistic of their 2 x K table
    (missing values left out), its p-value by permutation: valid at any count, and a category only one side has
    counts as evidence, not as a division by zero. (Evidently's chi-square is a goodness-of-fit of the current
    counts to the reference shares: a category the reference lacks gives p = 0, the false alarm issue 36 met.)
    Enough permutations that a p-value under `alpha` can be reached (at least 20 / alpha)."""
    ref = [str(v) for v in reference if not pd.isna(v)]
    cur = [str(v) for v in current if not pd.isna(v)]
    categories, codes = np.unique(np.array(ref + cur, dtype=object).astype(str), return_inverse=True)
    if not ref or not cur or len(categories) < 2:
        return 1.0
    onehot = np.eye(len(categories))[codes]
    total, n_cur = onehot.sum(axis=0), len(cur)
    expected = np.outer([len(ref), n_cur], total) / len(codes)

    def statistic(current_counts: np.ndarray) -> np.ndarray:  # rows: permutations, columns: categories
        table = np.stack([total - current_counts, current_counts], axis=1)
        return ((table - expected) ** 2 / expected).sum(axis=(1, 2))

    observed = statistic(onehot[len(ref):].sum(axis=0, keepdims=True))[0]
    rng, permutations, exceed = np.random.default_rng(seed), max(1000, int(np.ceil(20 / alpha))), 0
    for start in range(0, permutations, 1000):
        draws = min(1000, permutations - start)
        picks = np.argsort(rng.random((draws, len(codes))), axis=1)[:, :n_cur]
        exceed += int((statistic(onehot[picks].sum(axis=1)) >= observed - 1e-9).sum())
    return (exceed + 1) / (permutations + 1)


UNKNOWN_SERIES = ("", ".")  # no DICOM series and no folder of its own: a raster file of a flat export


def series_where_unknown(series: Sequence[str], thumbnails: np.ndarray, threshold: float) -> list[str]:
    """Each slice's series; where it has none (a JPEG/PNG export: no DICOM SeriesInstanceUID, no folder per
    series), its near-duplicate group, drawn as preprocess draws groups (thumbnail correlation >= threshold),
    named apart from the reference's groups. Without this a flat raster export is one series, and every pass
    says "too few new series"."""
    from components.lib.grouping import assign_groups

    known = [s if s not in UNKNOWN_SERIES else "" for s in series]
    if all(known):
        return known
    groups = assign_groups(known, thumbnails, threshold)
    return [g if k else f"new-{g}" for g, k in zip(groups, known)]


def class_counts(table: pd.DataFrame, column: str, classes: Sequence[str]) -> dict[str, int]:
    """Series per class of `column` (label or verdict), every class listed."""
    counts = table[column].value_counts() if column in table.columns else pd.Series(dtype=int)
    return {c: int(counts.get(c, 0)) for c in classes}


def decide(findings: Sequence[Finding], performance: Performance | None) -> Verdict:
    """degraded beats drift beats no drift; every reason names the test and its numbers."""
    drifted = [f.line() for f in findings if f.drifted]
    if performance is not None and performance.degraded:
        reasons = []
        if performance.certified is not None and performance.score < performance.certified - performance.max_drop \
                and performance.high < performance.certified:
            reasons.append(f"champion {performance.metric} on the new labelled cases {performance.score:.3f} "
                           f"[{performance.low:.3f}, {performance.high:.3f}] is more than {performance.max_drop} "
                           f"below its certified {performance.certified:.3f}")
        if performance.coverage_broken:
            reasons.append(f"the conformal sets hold the label of {performance.set_coverage:.0%} of the "
                           f"{performance.series} new labelled series, certified at {performance.coverage_target:.0%} "
                           f"(binomial p {performance.coverage_p_value:.2g}): the guarantee no longer holds here")
        return Verdict("degraded", [*reasons, *drifted])
    if drifted:
        return Verdict("drift", drifted)
    return Verdict("no drift", [f"no test of {len(findings)} crossed its threshold"])
