"""Pure core of preprocess: decode, window, resize, group and split (no file IO here)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from components.common import console
from components.common.imaging import decode_image, prepare_for_model, resize, window_unit
from components.common.params import PreprocessParams
from components.lib.grouping import assign_groups
from components.lib.prepared import SPLITS, pixel_statistics
from components.preprocess.split import split_by_group, straddling_groups


@dataclass(frozen=True)
class ImageRow:
    """What preprocess needs of one manifest/table row."""

    key: str
    label: str
    group: str  # patient key, or "" when the export has none


@dataclass
class PreparedData:
    """Model-ready arrays per split plus the split table and its summary."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (X uint8 (N,S,S,1), y int64 (N,))
    table: list[dict[str, str]]  # key, label, group, split
    summary: dict


def decode_all(rows: list[ImageRow], get_bytes: Callable[[str], bytes], params: PreprocessParams,
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (N,S,S) uint8 and grouping thumbnails (N,t,t) float32 for every row."""
    size, thumb = params.image_size, params.duplicate_size
    images = np.empty((len(rows), size, size), dtype=np.uint8)
    thumbs = np.empty((len(rows), thumb, thumb), dtype=np.float32)
    for i, row in enumerate(console.progress(rows, desc="preprocess", unit="img", disable=not progress)):
        loaded = decode_image(get_bytes(row.key))
        images[i] = prepare_for_model(loaded, size, params.window_center, params.window_width, params.body_crop)
        thumbs[i] = resize(window_unit(loaded, params.window_center, params.window_width), thumb)
    return images, thumbs


def summarise(labels: list[str], groups: list[str], splits: list[str], group_source: str) -> dict:
    """Counts per split and class, and the group size distribution."""
    sizes = np.array(sorted(Counter(groups).values()))
    return {
        "images": len(labels),
        "group_source": group_source,
        "groups": int(len(sizes)),
        "group_size": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
        "per_split": {s: dict(sorted(Counter(lab for lab, sp in zip(labels, splits) if sp == s).items()))
                      for s in SPLITS},
        "groups_per_split": {s: len({g for g, sp in zip(groups, splits) if sp == s}) for s in SPLITS},
    }


def build_prepared(rows: list[ImageRow], images: np.ndarray, thumbs: np.ndarray, classes: list[str],
                   params: PreprocessParams) -> PreparedData:
    """Group, split and pack decoded images into per-split arrays."""
    unknown = sorted({r.label for r in rows} - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not in classes {classes}")
    labels = [r.label for r in rows]
    groups = assign_groups([r.group for r in rows], thumbs, params.duplicate_threshold)
    splits = split_by_group(labels, groups, params.test_fraction, params.val_fraction, params.seed)
    if straddling_groups(groups, splits):  # the split's own invariant; a bug if it ever fires
        raise AssertionError("a group straddles splits")
    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for split in SPLITS:
        mask = np.array([s == split for s in splits], dtype=bool)
        y = np.array([index[lab] for lab, m in zip(labels, mask) if m], dtype=np.int64)
        arrays[split] = (images[mask][..., None], y)
    source = "patient" if all(r.group for r in rows) else "near-duplicate" if not any(r.group for r in rows) else "mixed"
    table = [{"key": r.key, "label": r.label, "group": g, "split": s} for r, g, s in zip(rows, groups, splits)]
    summary = summarise(labels, groups, splits, source)
    summary["train_pixel_mean"], summary["train_pixel_variance"] = pixel_statistics(arrays["train"][0])
    return PreparedData(arrays=arrays, table=table, summary=summary)


def rows_from_table(records: Iterable[dict]) -> list[ImageRow]:
    """ImageRows from validated-table records (key, label, group columns)."""
    rows = []
    for rec in records:
        group = rec.get("group")
        group = "" if group is None or (isinstance(group, float) and np.isnan(group)) else str(group)
        rows.append(ImageRow(key=str(rec["key"]), label=str(rec["label"]), group=group))
    return rows
