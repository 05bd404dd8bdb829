"""CLI: python -m components.augment — write the policy and a preview grid of augmented samples."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from components.augment.core import augment_batch, describe_policy, pick_preview_images
from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.plots import save_image_grid


def run(params: Params, args: argparse.Namespace) -> None:
    arrays = Path(params.paths.prepared) / "arrays"
    if not (arrays / "X_train.npy").is_file():
        raise StageError(f"{arrays} has no X_train.npy: run the preprocess stage first")
    x, y = np.load(arrays / "X_train.npy", mmap_mode="r"), np.load(arrays / "y_train.npy")
    originals, labels = pick_preview_images(x, y, len(params.classes))
    columns = [originals[..., 0]]
    for round_ in range(params.augment.preview_samples):
        columns.append(augment_batch(originals, params.augment, seed=params.train.seed + round_)[..., 0])
    grid = [[col[i] for col in columns] for i in range(len(labels))]
    out = Path(params.paths.augment_preview)
    save_image_grid(grid, row_titles=[params.classes[i] for i in labels],
                    col_titles=["original"] + [f"augmented {i + 1}" for i in range(params.augment.preview_samples)],
                    path=out / "preview.png", title="Augmented training samples (rotation, zoom, contrast)")
    write_json(out / "policy.json", describe_policy(params.augment))
    log.info("wrote %s and %s", out / "preview.png", out / "policy.json")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Describe the augmentation policy and draw a preview grid of augmented samples.")
    return run_stage("augment", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
