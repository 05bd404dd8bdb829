"""The grouped k-fold CV that leakage runs (and cv_refit certifies a model by): its folds, and the print of
the recipe it scored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from components.common.params import Params


@dataclass(frozen=True)
class IndexSplit:
    """Positions into one image array for train, validation and test."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _first_group_fold(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return next(splitter.split(np.zeros(len(labels)), labels, groups))


def grouped_folds(labels: np.ndarray, groups: np.ndarray, folds: int, val_fraction: float,
                  seed: int) -> Iterator[IndexSplit]:
    """Stratified group k-fold; inside each fold's training part, a grouped validation split."""
    if len(np.unique(groups)) < folds:
        raise ValueError(f"{folds} folds need at least {folds} groups; the data has {len(np.unique(groups))}")
    outer = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    inner_folds = max(2, round(1 / val_fraction))
    for rest, test in outer.split(np.zeros(len(labels)), labels, groups):
        inner_train, inner_val = _first_group_fold(labels[rest], groups[rest], inner_folds, seed)
        yield IndexSplit(rest[inner_train], rest[inner_val], test)


def recipe_params(params: Params, name: str) -> dict:
    """The knobs that make a training recipe, flattened for MLflow (what a CV trial varies)."""
    flat = {f"candidate.{k}": v for k, v in params.train.candidates[name].model_dump().items()}
    flat.update({f"augment.{k}": v for k, v in params.augment.model_dump().items() if k != "preview_samples"})
    flat.update({"preprocess.image_size": params.preprocess.image_size, "train.seed": params.train.seed,
                 "leakage.seed": params.leakage.seed, "leakage.cv_folds": params.leakage.cv_folds,
                 "leakage.tta": "+".join(params.leakage.tta) or "none", "leakage.ensemble": params.leakage.ensemble})
    if params.preprocess.body_crop:  # named only when on, so recipes from before the knob keep their prints
        flat["preprocess.body_crop"] = True
    if params.backbone.copies:
        flat["backbone.copies"] = "+".join(params.backbone.copies)
    return flat


def recipe_fingerprint(params: Params, name: str) -> str:
    """sha256 (16 hex) of the recipe a grouped CV scored: evaluate's cv_refit refuses a CV of another recipe."""
    import hashlib
    import json

    recipe = {k: v for k, v in recipe_params(params, name).items() if not k.startswith("leakage.")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
