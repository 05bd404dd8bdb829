"""Pure core of the validate stage: the image table and the suite's run-time parameters."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.common import console
from components.common.imaging import ImageDecodeError, decode_image
from components.common.storage import StorageError

SUITE_FILE = Path(__file__).parent / "expectations" / "kidney_ct_manifest.json"  # the declared image-table suite

MANIFEST_COLUMNS = ("key", "sha256", "source", "label", "group", "series", "format")
IMAGE_COLUMNS = ("width", "height", "mode", "pixel_min", "pixel_max", "pixel_mean", "pixel_std")
TABLE_COLUMNS = MANIFEST_COLUMNS + IMAGE_COLUMNS + ("decode_error",)

GetBytes = Callable[[str], bytes]


def _clean(value: Any) -> Any:
    """Manifest cell -> value, with blanks and NaN as None (so GX sees a null)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def image_facts(data: bytes) -> dict[str, Any]:
    """Width, height, original mode and intensity stats (HU for DICOM, 0-255 for rasters)."""
    image = decode_image(data)
    pixels = image.pixels.astype(np.float64)
    height, width = pixels.shape
    return {
        "width": int(width), "height": int(height), "mode": image.mode,
        "pixel_min": float(pixels.min()), "pixel_max": float(pixels.max()),
        "pixel_mean": float(pixels.mean()), "pixel_std": float(pixels.std()),
    }


def table_row(manifest_row: Mapping[str, Any], get_bytes: GetBytes) -> dict[str, Any]:
    """One table row: the manifest fields plus the decoded image's facts, or why it failed."""
    row: dict[str, Any] = {name: _clean(manifest_row.get(name)) for name in MANIFEST_COLUMNS}
    row.update({name: None for name in IMAGE_COLUMNS})
    row["decode_error"] = None
    if row["key"] is None:
        row["decode_error"] = "manifest row has no storage key"
        return row
    try:
        row.update(image_facts(get_bytes(str(row["key"]))))
    except (ImageDecodeError, StorageError) as exc:
        row["decode_error"] = str(exc)
    return row


def build_table(manifest_rows: Iterable[Mapping[str, Any]], get_bytes: GetBytes,
                progress: bool = True) -> pd.DataFrame:
    """Decode every image listed in the manifest into one table row (never raises on bad images)."""
    rows = list(manifest_rows)
    records = [table_row(row, get_bytes)
               for row in console.progress(rows, desc="decoding images", unit="img", disable=not progress)]
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    for name in ("width", "height"):
        table[name] = table[name].astype("Int64")
    return table


def class_counts(table: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    """Images per configured class (0 where a class is absent)."""
    counts = table["label"].value_counts()
    return {name: int(counts.get(name, 0)) for name in classes}


def share_bounds(rows: int, min_share: float, max_share: float) -> tuple[int, int]:
    """Allowed image count per class for `rows` images: [ceil(min*rows), floor(max*rows)]."""
    eps = 1e-9  # 0.07 * 100 is 7.000000000000001 in floating point: do not demand 8
    return math.ceil(min_share * rows - eps), math.floor(max_share * rows + eps)


def class_id(index: int) -> str:
    """A suite-parameter-safe name for the index-th class (class names may hold any character)."""
    return f"class_{index}"


def suite_parameters(classes: list[str], rows: int, min_width: int, max_width: int,
                     min_share: float, max_share: float) -> dict[str, Any]:
    """Values for every {"$PARAMETER": ...} in the declared suite, computed from params."""
    low, high = share_bounds(rows, min_share, max_share)
    values: dict[str, Any] = {"classes": list(classes), "min_width": min_width, "max_width": max_width}
    for index, _ in enumerate(classes):
        values[f"min_count_{class_id(index)}"] = low
        values[f"max_count_{class_id(index)}"] = high
    return values


def _substitute(value: Any, replacements: dict[str, str]) -> Any:
    """Replace placeholders in every string inside a JSON-like value."""
    if isinstance(value, str):
        for placeholder, text in replacements.items():
            value = value.replace(placeholder, text)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, replacements) for v in value]
    return value


def share_wording(rows: int, min_share: float, max_share: float) -> dict[str, str]:
    """Numbers for the {placeholders} in the suite's notes/descriptions (shown in Data Docs)."""
    low, high = share_bounds(rows, min_share, max_share)
    return {"min_class_share": f"{min_share:g}", "max_class_share": f"{max_share:g}",
            "min_count": str(low), "max_count": str(high), "rows": str(rows)}


def expand_suite(declared: dict[str, Any], classes: list[str],
                 wording: dict[str, str] | None = None) -> dict[str, Any]:
    """Repeat each `for_each_class` expectation once per class, filling {class} and {class_id};
    fill any other {name} in `wording` (e.g. thresholds quoted in descriptions) everywhere."""
    suite = copy.deepcopy(declared)
    texts = {f"{{{name}}}": value for name, value in (wording or {}).items()}
    expanded: list[dict[str, Any]] = []
    for expectation in suite.get("expectations", []):
        meta = expectation.get("meta") or {}
        if not meta.get("for_each_class"):
            expanded.append(_substitute(expectation, texts))
            continue
        for index, name in enumerate(classes):
            copy_ = _substitute(expectation, {"{class}": name, "{class_id}": class_id(index), **texts})
            copy_["meta"].pop("for_each_class", None)
            expanded.append(copy_)
    suite["expectations"] = expanded
    return suite
