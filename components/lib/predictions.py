"""Evaluate's predictions, written once: val/test probabilities per candidate and the bootstrap CIs.

The report stage reads them instead of predicting and bootstrapping again (paths.predictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PROBABILITIES = "probabilities.csv"  # candidate, split, index, key, group, series, label, p_<class>...
INTERVALS = "intervals.json"  # candidate -> {"slice": ci95, "series": ci95} (group_bootstrap output)
CV_PREDICTIONS = "cv_predictions.csv"  # leakage: every image's out-of-fold probabilities (split "cv", + fold)
CV_SPLIT = "cv"
SHIFT_PREFIX = "shift_p_"  # cv_predictions.csv: the out-of-fold probabilities of each slice's scanner-shifted copy


@dataclass(frozen=True)
class SplitPredictions:
    """One candidate's probabilities on one split, in the order of that split's arrays."""

    labels: np.ndarray  # (N,) true class index
    probabilities: np.ndarray  # (N, classes)
    groups: list[str]
    series: list[str]
    keys: list[str]


def probability_rows(candidate: str, split: str, predictions: SplitPredictions, classes: list[str]) -> pd.DataFrame:
    """One row per slice with its true label and one probability column per class."""
    frame = pd.DataFrame({"candidate": candidate, "split": split, "index": np.arange(len(predictions.labels)),
                          "key": predictions.keys, "group": predictions.groups, "series": predictions.series,
                          "label": [classes[int(y)] for y in predictions.labels]})
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = predictions.probabilities[:, k]
    return frame


def read_split(frame: pd.DataFrame, candidate: str, split: str, classes: list[str]) -> SplitPredictions:
    """The rows of one candidate and split back as arrays; a clear error when they are missing."""
    rows = frame[(frame["candidate"] == candidate) & (frame["split"] == split)].sort_values("index")
    if rows.empty:
        raise KeyError(f"no {split} probabilities for candidate {candidate!r}: re-run the evaluate stage")
    missing = [c for c in classes if f"p_{c}" not in rows]
    if missing:
        raise KeyError(f"the probabilities lack classes {missing}: re-run the evaluate stage")
    index = {c: i for i, c in enumerate(classes)}
    return SplitPredictions(labels=np.array([index[c] for c in rows["label"]], dtype=np.int64),
                            probabilities=rows[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64),
                            groups=rows["group"].astype(str).tolist(), series=rows["series"].astype(str).tolist(),
                            keys=rows["key"].astype(str).tolist())


def load_probabilities(folder: Path, name: str = PROBABILITIES) -> pd.DataFrame:
    return pd.read_csv(folder / name, dtype={"key": str, "group": str, "series": str})
