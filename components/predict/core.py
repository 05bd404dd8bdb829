"""Pure core of batch scoring: decode every slice as serving does, predict in batches, pool per series.

No file IO here: the CLI hands in (name, read) pairs and a predict function; tests hand in fakes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from components.common import console
from components.common.conformal import set_label
from components.common.imaging import ImageDecodeError, decode_image, prepare_for_model
from components.common.study import series_key, study_verdict
from components.common.study_model import StudyModel

Predict = Callable[[np.ndarray], np.ndarray]  # (N, size, size, 1) float32 -> (N, classes) probabilities


@dataclass(frozen=True)
class Contract:
    """What the model expects: its classes and the preprocessing it was trained with."""

    classes: list[str]
    image_size: int
    window_center: float
    window_width: float
    body_crop: bool = False


@dataclass
class Scored:
    """Rows for predictions.csv (slices), the series table and the quarantine, plus the summary."""

    slices: list[dict] = field(default_factory=list)
    series: list[dict] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def read_slice(name: str, read: Callable[[], bytes], contract: Contract) -> tuple[np.ndarray, str]:
    """(size, size) uint8 model input and series key of one file; ImageDecodeError/OSError when unusable."""
    data = read()
    pixels = prepare_for_model(decode_image(data), contract.image_size, contract.window_center, contract.window_width,
                               contract.body_crop)
    return pixels, series_key(name, data)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ImageDecodeError):
        return str(exc)
    return f"cannot read the file ({exc.__class__.__name__}: {exc})"


def decode_files(items: Iterable[tuple[str, Callable[[], bytes]]], contract: Contract, total: int | None = None,
                 progress: bool = True) -> tuple[list[str], list[str], np.ndarray, list[dict]]:
    """Names, series keys and pixels of the readable files; a quarantine row (name, reason) for each other."""
    names, series, pixels, quarantine = [], [], [], []
    for name, read in console.progress(items, total=total, desc="predict", unit="file", disable=not progress):
        try:
            image, key = read_slice(name, read, contract)
        except (ImageDecodeError, OSError) as exc:
            quarantine.append({"file": name, "reason": _reason(exc)})
            continue
        names.append(name), series.append(key), pixels.append(image)
    stack = np.stack(pixels) if pixels else np.zeros((0, contract.image_size, contract.image_size), np.uint8)
    return names, series, stack, quarantine


def predict_batches(predict: Predict, pixels: np.ndarray, n_classes: int, batch_size: int = 64) -> np.ndarray:
    """(N, size, size) uint8 -> (N, classes) probabilities, in batches."""
    out = [np.asarray(predict(pixels[i:i + batch_size, ..., None].astype(np.float32)), dtype=np.float64)
           for i in range(0, len(pixels), batch_size)]
    probs = np.concatenate(out) if out else np.zeros((0, n_classes))
    if probs.shape != (len(pixels), n_classes):
        raise ValueError(f"the model returned {probs.shape[-1]} scores per slice for {n_classes} classes")
    return probs


def tabulate(names: list[str], series: list[str], probs: np.ndarray, contract: Contract,
             pooling: str, study: StudyModel | None = None) -> tuple[list[dict], list[dict]]:
    """Slice rows (probabilities, predicted class, the series' verdict and set) and one row per series: its verdict,
    its conformal set (e.g. `Tumor|Normal`, most probable first) and whether to refer it to a radiologist."""
    classes = contract.classes
    series_rows, verdict_of = [], {}
    keys = np.array(series, dtype=object)
    for key in sorted(set(series)):
        members = np.flatnonzero(keys == key)
        verdict = study_verdict(probs[members], classes, pooling, top_k=1, study=study)
        verdict_of[key] = verdict
        series_rows.append({"series": key, "slices": int(len(members)), "verdict": verdict.label,
                            "set": verdict.set_label, "refer": verdict.refer, "coverage": verdict.coverage,
                            "pooling": verdict.pooling,
                            **{f"p_{c}": round(p, 6) for c, p in verdict.probabilities.items()},
                            "top_slice": names[members[verdict.top[0]]]})
    slice_rows = [{"file": n, "series": s, "predicted": classes[int(p.argmax())],
                   "confidence": round(float(p.max()), 6),
                   **{f"p_{c}": round(float(v), 6) for c, v in zip(classes, p)}, "slice_set": slice_set(p, classes, study),
                   "series_verdict": verdict_of[s].label, "series_set": verdict_of[s].set_label}
                  for n, s, p in zip(names, series, probs)]
    return slice_rows, series_rows


def slice_set(probabilities: np.ndarray, classes: list[str], study: StudyModel | None) -> str:
    """One slice's own conformal set as text ("" without a slice calibration)."""
    members = study.slice_set(probabilities) if study is not None else None
    if members is None:
        return ""
    return set_label(members, probabilities, classes)


def score_export(items: Iterable[tuple[str, Callable[[], bytes]]], predict: Predict, contract: Contract,
                 pooling: str = "mean", total: int | None = None, batch_size: int = 64,
                 progress: bool = True, study: StudyModel | None = None) -> Scored:
    """Score every file: readable slices get probabilities and a series verdict (and set), the rest a quarantine
    reason."""
    names, series, pixels, quarantine = decode_files(items, contract, total, progress)
    probs = predict_batches(predict, pixels, len(contract.classes), batch_size)
    slice_rows, series_rows = tabulate(names, series, probs, contract, pooling, study)
    summary = {"files_seen": len(names) + len(quarantine), "slices_scored": len(names),
               "quarantined": len(quarantine), "series": len(series_rows),
               "pooling": series_rows[0]["pooling"] if series_rows else pooling,
               "slices_per_class": dict(Counter(r["predicted"] for r in slice_rows)),
               "series_per_verdict": dict(Counter(r["verdict"] for r in series_rows)),
               "series_referred": sum(bool(r["refer"]) for r in series_rows),
               "quarantine_reasons": dict(Counter(q["reason"] for q in quarantine))}
    return Scored(slice_rows, series_rows, quarantine, summary)
