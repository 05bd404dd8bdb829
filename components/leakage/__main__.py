"""CLI: python -m components.leakage — the same recipe on a random split, and grouped k-fold CV."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.leakage.core import (IndexSplit, grouped_folds, groups_overlap, random_image_split, score_split,
                                     summarise_folds)
from components.preprocess.core import pixel_statistics
from components.preprocess.split import SPLITS
from components.train.core import SplitArrays, train_candidate



def load_all_images(prepared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prepared image with its label and group, in the order the split arrays hold them."""
    table = pd.read_csv(prepared / "split.csv", dtype=str)
    xs, ys, groups = [], [], []
    for split in SPLITS:
        xs.append(np.load(prepared / "arrays" / f"X_{split}.npy"))
        ys.append(np.load(prepared / "arrays" / f"y_{split}.npy"))
        groups.append(table.loc[table["split"] == split, "group"].to_numpy())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)


def recipe_fit(params: Params, name: str, x: np.ndarray, y: np.ndarray):
    """A closure training candidate `name` on any index split and returning test probabilities."""
    candidate = params.train.candidates[name]

    def fit(split: IndexSplit) -> np.ndarray:
        data = SplitArrays(x[split.train], y[split.train], x[split.val], y[split.val], *pixel_statistics(x[split.train]))
        result = train_candidate(name, candidate, params.augment, data, len(params.classes), params.train.seed,
                                 callbacks=[], verbose=0)
        return np.asarray(result.model.predict(x[split.test].astype("float32"), batch_size=64, verbose=0))

    return fit


def run(params: Params, args: argparse.Namespace) -> None:
    settings, prepared = params.leakage, Path(params.paths.prepared)
    if not (prepared / "split.csv").is_file():
        raise StageError(f"{prepared / 'split.csv'} not found: run the preprocess stage first")
    name = settings.candidate or next(iter(params.train.candidates))
    if name not in params.train.candidates:
        raise StageError(f"leakage.candidate {name!r} is not in train.candidates {sorted(params.train.candidates)}")
    x, y, groups = load_all_images(prepared)
    fit = recipe_fit(params, name, x, y)
    report: dict = {"candidate": name, "images": int(len(y)), "groups": int(len(np.unique(groups)))}
    if settings.random_split:
        split = random_image_split(y, params.preprocess.test_fraction, params.preprocess.val_fraction, settings.seed)
        log.info("training %s on a RANDOM image-level split (leaky on purpose: %d groups on both sides)", name,
                 len(groups_overlap(split, groups)))
        report["random_split"] = score_split(fit, split, y, params.classes)
        report["random_split"]["groups_shared_with_test"] = len(set(groups[split.test]) & set(groups[split.train]))
    if settings.cv_folds >= 2:
        folds = []
        try:
            splits = list(grouped_folds(y, groups, settings.cv_folds, params.preprocess.val_fraction, settings.seed))
        except ValueError as exc:
            raise StageError(str(exc)) from None
        for k, split in enumerate(splits, start=1):
            log.info("grouped fold %d/%d: %d train, %d val, %d test images", k, len(splits), len(split.train),
                     len(split.val), len(split.test))
            folds.append(score_split(fit, split, y, params.classes))
        report["grouped_cv"] = {"folds": len(folds), "per_fold": folds, **summarise_folds(folds, params.classes)}
    write_json(Path(params.paths.leakage) / "leakage.json", report)
    if "random_split" in report:
        r = report["random_split"]
        log.info("random split: accuracy %.3f, macro-F1 %.3f (compare with the group-aware numbers of evaluate)",
                 r["accuracy"], r["macro_f1"])
    if "grouped_cv" in report:
        cv = report["grouped_cv"]
        log.info("grouped %d-fold CV: macro-F1 %.3f ± %.3f", cv["folds"], cv["macro_f1"]["mean"], cv["macro_f1"]["std"])


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Score the training recipe on a random image-level split (the leaky number the "
                          "literature reports) and, optionally, by grouped k-fold cross-validation.")
    return run_stage("leakage", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
