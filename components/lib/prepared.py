"""The preprocess stage's outputs as the stages after it read them: the splits in array order, every image with
its label and group, split.csv's rows, and the training pixels' statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.common.pooling import series_ids

SPLITS = ("train", "val", "test")  # the order of the prepared arrays (and of every image in load_all_images)


def split_counts(arrays: Path) -> dict[str, int]:
    """{split: images} of the prepared arrays (their label files, memory-mapped)."""
    return {split: int(np.load(arrays / f"y_{split}.npy", mmap_mode="r").shape[0]) for split in SPLITS}


def load_all_images(prepared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prepared image with its label and group, in the order the split arrays hold them."""
    table = pd.read_csv(prepared / "split.csv", dtype=str)
    xs, ys, groups = [], [], []
    for split in SPLITS:
        xs.append(np.load(prepared / "arrays" / f"X_{split}.npy"))
        ys.append(np.load(prepared / "arrays" / f"y_{split}.npy"))
        groups.append(table.loc[table["split"] == split, "group"].to_numpy())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)


def load_rows(prepared: Path) -> pd.DataFrame:
    """split.csv's rows in the order of load_all_images (train, val, test), with a `study` column.

    `study` is each image's study unit: its DICOM series, else its group.
    """
    table = pd.read_csv(prepared / "split.csv", dtype=str, keep_default_na=False)
    rows = pd.concat([table.loc[table["split"] == split] for split in SPLITS], ignore_index=True)
    rows["study"] = series_ids(rows["group"].tolist(), rows["series"].tolist() if "series" in rows else None)
    return rows


def pixel_statistics(x_train: np.ndarray) -> tuple[float, float]:
    """Mean and variance of training pixels on the model's [0, 1] scale (for its Normalization layer)."""
    if x_train.size == 0:
        raise ValueError("the training split is empty")
    unit = x_train.astype(np.float64) / 255.0
    return float(unit.mean()), float(unit.var())
