"""The features stage's cache: its column layout, and reading it for a ct_resnet152 candidate (train, leakage)
with plain refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.common.params import CandidateParams, Params
from components.lib.ct_resnet import WEIGHTS_FILE
from components.lib.prepared import SPLITS

LAYER_WIDTHS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}  # pooled features per layer


Block = tuple[str, str]  # (layer, pooling): one layer's map pooled one way, LAYER_WIDTHS[layer] columns


def as_block(entry: str | tuple | list) -> Block:
    """`layer3` (its mean pooling, the cache's first format) or (`layer3`, `max`) -> (layer, pooling)."""
    return (entry, "mean") if isinstance(entry, str) else (str(entry[0]), str(entry[1]))


def layer_columns(cached: list, wanted: list, widths: dict[str, int] = LAYER_WIDTHS) -> np.ndarray:
    """Column indices of `wanted` blocks (in that order) in a feature matrix holding `cached` blocks side by side.

    A block is a layer name (its mean pooling) or a (layer, pooling) pair.
    """
    cached, wanted = [as_block(b) for b in cached], [as_block(b) for b in wanted]
    missing = [b for b in wanted if b not in cached]
    if missing:
        names = ", ".join(f"{layer} {p}" for layer, p in missing)
        raise ValueError(f"features of {names} are not cached (cached: {cached}); add them to backbone.layers "
                         "and backbone.pooling")
    starts = np.cumsum([0] + [widths[layer] for layer, _ in cached])
    return np.concatenate([np.arange(starts[cached.index(w)], starts[cached.index(w) + 1]) for w in wanted])


def copy_file(split: str, kind: str = "plain") -> str:
    """The cache file of one split's features: `train.npy`, or of its scanner copy `train_shift.npy`."""
    return f"{split}.npy" if kind == "plain" else f"{split}_{kind}.npy"


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
    from components.lib.models import model_input_size

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
    cached_cut = meta.get("deepest_layer_blocks")
    if cached_cut != candidate.deepest_layer_blocks:
        raise FeaturesError(f"features were cached with the deepest layer read after {cached_cut or 'all its'} "
                            f"blocks; the candidate reads {candidate.deepest_layer_blocks or 'all'}: set "
                            "backbone.deepest_layer_blocks and the candidate's deepest_layer_blocks alike")
    if meta["images"] != counts:
        raise FeaturesError(f"features cover {meta['images']} images, the arrays {counts}: re-run the features stage")
    try:
        columns = layer_columns(meta.get("blocks") or meta["layers"], candidate.feature_blocks())
    except ValueError as exc:
        raise FeaturesError(str(exc)) from None
    return {split: np.load(folder / f"{split}.npy", mmap_mode="r")[:, columns] for split in SPLITS}


def load_copies(params: Params, candidate: CandidateParams, kind: str) -> dict[str, np.ndarray] | None:
    """{split: features} of the slices' `kind` copies (backbone.copies), the candidate's columns; None if not cached."""
    folder = Path(params.paths.features)
    meta = json.loads((folder / "features.json").read_text()) if (folder / "features.json").is_file() else {}
    if kind not in meta.get("copies", []):
        return None
    columns = layer_columns(meta.get("blocks") or meta["layers"], candidate.feature_blocks())
    return {split: np.load(folder / copy_file(split, kind), mmap_mode="r")[:, columns] for split in SPLITS}
