"""Reading the features stage's cache for a ct_resnet152 candidate (train, leakage), with plain refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.backbone.core import WEIGHTS_FILE
from components.common.params import CandidateParams, Params
from components.features.core import layer_columns
from components.preprocess.split import SPLITS


class FeaturesError(ValueError):
    """The cached features do not fit the candidate; the message says what to re-run or change."""


def resolve_backbone(params: Params, candidate: CandidateParams) -> CandidateParams:
    """`weights: converted` -> the backbone stage's .npz under paths.backbone (other values unchanged)."""
    if candidate.weights != "converted":
        return candidate
    return candidate.model_copy(update={"weights": str(Path(params.paths.backbone) / WEIGHTS_FILE)})


def load_features(params: Params, candidate: CandidateParams, image_size: int,
                  counts: dict[str, int]) -> dict[str, np.ndarray]:
    """{split: (N, D) features of the candidate's `backbone_layers`}, checked against the arrays they describe."""
    from components.train.models import model_input_size

    folder = Path(params.paths.features)
    meta_file = folder / "features.json"
    if not meta_file.is_file():
        raise FeaturesError(f"{meta_file} not found: run the features stage first")
    meta = json.loads(meta_file.read_text())
    if not meta.get("enabled"):
        raise FeaturesError("no cached features: set backbone.enabled: true and run the backbone and features stages")
    size = model_input_size(candidate, image_size)
    if meta["image_size"] != size or meta["array_size"] != image_size:
        raise FeaturesError(f"features were cached at {meta['image_size']} px from {meta['array_size']} px arrays; "
                            f"the candidate needs {size} px from {image_size} px: set backbone.image_size to match")
    if meta["images"] != counts:
        raise FeaturesError(f"features cover {meta['images']} images, the arrays {counts}: re-run the features stage")
    try:
        columns = layer_columns(meta.get("blocks") or meta["layers"], candidate.feature_blocks())
    except ValueError as exc:
        raise FeaturesError(str(exc)) from None
    return {split: np.load(folder / f"{split}.npy", mmap_mode="r")[:, columns] for split in SPLITS}
