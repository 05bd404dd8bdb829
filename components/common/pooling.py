"""Study verdicts: pool the slice probabilities of one series into one probability vector per series.

Shared by evaluate, leakage, batch scoring and serving, so a study is judged the same way everywhere.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Pooling = Literal["mean", "max", "geometric", "vote", "gem"]
POOLINGS: tuple[str, ...] = ("mean", "max", "geometric", "vote", "gem")
GEM_POWER = 3.0  # generalised mean: between the mean (p=1) and the max (p -> infinity)


def fixed_pooling(name: str) -> str:
    """`name` where it is a fixed pooling; "mean" for the learned one (a study model's series head, fitted by
    evaluate on the out-of-fold predictions: a stage scoring before it exists pools by the mean)."""
    return name if name in POOLINGS else "mean"


def _normalised(p: np.ndarray) -> np.ndarray:
    total = p.sum()
    return p / total if total > 0 else np.full_like(p, 1.0 / len(p))


def pool(probabilities: np.ndarray, method: str = "mean") -> np.ndarray:
    """(slices, classes) -> (classes,) summing to 1.

    mean: average probability; max: each class's highest slice probability (renormalised), so one
    confident lesion slice can carry the study; geometric: mean log-probability; vote: share of slices
    predicting each class (the mean breaks ties); gem: the generalised mean (mean of p**3)**(1/3), which leans
    towards a study's confident slices without letting a single one decide as max does.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"need (slices, classes) probabilities with at least one slice, got shape {p.shape}")
    if method == "mean":
        return _normalised(p.mean(axis=0))
    if method == "max":
        return _normalised(p.max(axis=0))
    if method == "geometric":
        return _normalised(np.exp(np.log(np.clip(p, 1e-7, 1.0)).mean(axis=0)))
    if method == "vote":
        votes = np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(np.float64)
        return _normalised(votes + 1e-3 * p.mean(axis=0))
    if method == "gem":
        return _normalised(np.mean(p ** GEM_POWER, axis=0) ** (1.0 / GEM_POWER))
    raise ValueError(f"unknown series pooling {method!r}; choose one of {', '.join(POOLINGS)}")


def pool_by_series(probabilities: np.ndarray, series: list[str] | np.ndarray,
                   method: str = "mean") -> tuple[list[str], np.ndarray]:
    """Series ids (sorted) and their pooled (n_series, classes) probabilities."""
    names = np.asarray(series, dtype=str)
    if len(names) != len(probabilities):
        raise ValueError(f"{len(names)} series ids for {len(probabilities)} slices")
    unique = sorted(set(names.tolist()))
    pooled = np.array([pool(probabilities[names == s], method) for s in unique]).reshape(len(unique), -1)
    return unique, pooled


def series_labels(labels: np.ndarray, series: list[str] | np.ndarray, order: list[str]) -> np.ndarray:
    """Each series' true class: its slices' majority label (ties to the lower class index)."""
    names, labels = np.asarray(series, dtype=str), np.asarray(labels)
    return np.array([np.bincount(labels[names == s]).argmax() for s in order], dtype=np.int64)


def top_slices(probabilities: np.ndarray, verdict: int, k: int) -> list[int]:
    """Indices of the k slices with the highest probability of the verdict class, highest first."""
    order = np.argsort(-np.asarray(probabilities)[:, verdict], kind="stable")
    return [int(i) for i in order[:k]]


def series_ids(groups: list[str], series: list[str] | None = None) -> list[str]:
    """The study unit of each slice: its DICOM series key where known, else its split group.

    Class-folder JPEG exports have no series, so their near-duplicate cluster (one scan's neighbouring
    slices) stands in for it; DICOM exports carry the salted SeriesInstanceUID from ingest.
    """
    if series is None:
        return [str(g) for g in groups]
    return [str(s) if isinstance(s, str) and s and s.lower() != "nan" else str(g) for g, s in zip(groups, series)]
