"""CLI: python -m components.leakage — the same recipe on a random split, and grouped k-fold CV."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.params import Params
from components.common.pooling import fixed_pooling
from components.common.tracking import configure_mlflow
from components.common.tta import plain_and_tta
from components.leakage.core import (
    PLAIN,
    SHIFT,
    fold_variants,
    folds_fingerprint,
    groups_overlap,
    random_image_split,
    score_split,
    summarise_folds,
    summarise_variants,
    variant_label,
)
from components.lib.features import FeaturesError, load_copies, load_features, resolve_backbone
from components.lib.feeders import loss_weights
from components.lib.folds import IndexSplit, grouped_folds, recipe_fingerprint, recipe_params
from components.lib.heads import fit_frozen_head, head_probabilities, is_frozen_backbone
from components.lib.predictions import CV_PREDICTIONS, CV_SPLIT, SHIFT_PREFIX, SplitPredictions, probability_rows
from components.lib.prepared import SPLITS, load_all_images, load_rows, pixel_statistics, split_counts
from components.lib.training import SplitArrays, train_candidate


def frozen_backbone_fit(params: Params, name: str, x: np.ndarray, y: np.ndarray):
    """The fit of a frozen ct_resnet152 candidate: its logistic-regression head on the cached features.

    The features of every image are read in load_all_images' order; only the plain variant is scored (the head
    is deterministic, and TTA would need features of the augmented views).
    """
    candidate, prepared = params.train.candidates[name], Path(params.paths.prepared)
    try:
        cached = load_features(params, candidate, x.shape[1], split_counts(prepared / "arrays"))
    except FeaturesError as exc:
        raise StageError(str(exc)) from None
    features = np.concatenate([np.asarray(cached[s]) for s in SPLITS])
    copies = {kind: np.concatenate([np.asarray(c[s]) for s in SPLITS]) for kind in ("shift", "aug")
              if (c := load_copies(params, candidate, kind)) is not None}
    if params.leakage.tta or params.leakage.ensemble > 1:
        log.info("%s is a frozen backbone with a deterministic head: TTA and ensembles are not scored", name)

    def fit(split: IndexSplit) -> dict[str, np.ndarray]:
        x_train, y_train = with_augmented(features[split.train], y[split.train], copies.get("aug"), split.train)
        head = fit_frozen_head(candidate, x_train, y_train, features[split.val], y[split.val],
                               len(params.classes), params.train.seed)
        variants = {PLAIN: head_probabilities(head, features[split.test])}
        if "shift" in copies:  # the fold's test series as a sharper kernel shows them (components.lib.scanner)
            variants[SHIFT] = head_probabilities(head, copies["shift"][split.test])
        return variants

    return fit


def with_augmented(x: np.ndarray, y: np.ndarray, augmented: np.ndarray | None,
                   rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training features with their augmented copies' appended (backbone.copies has aug), labels alike."""
    if augmented is None:
        return x, y
    return np.concatenate([x, augmented[rows]]), np.concatenate([y, y])


def write_cv_predictions(path: Path, name: str, rows: pd.DataFrame, y: np.ndarray, oof: np.ndarray,
                         fold_of: np.ndarray, classes: list[str], shifted: np.ndarray | None = None) -> None:
    """Every image's out-of-fold probabilities (the plain variant) with its fold: what cv_refit certifies; with
    `shifted`, also those of its scanner-shifted copy (`shift_p_<class>` columns).

    Without a grouped CV the file holds the header only, so the DVC output always exists.
    """
    scored = fold_of > 0
    predictions = SplitPredictions(y[scored], oof[scored], rows["group"][scored].tolist(),
                                   rows["study"][scored].tolist(), rows["key"][scored].tolist())
    frame = probability_rows(name, CV_SPLIT, predictions, classes)
    frame["index"] = np.flatnonzero(scored)
    frame.insert(2, "fold", fold_of[scored])
    if shifted is not None:
        for k, c in enumerate(classes):
            frame[f"{SHIFT_PREFIX}{c}"] = shifted[scored, k]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def recipe_fit(params: Params, name: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """A closure training candidate `name` on any index split and returning test probabilities by variant.

    Variants: plain, and with `leakage.tta` / `leakage.ensemble` also TTA, ensemble, ensemble + TTA.
    """
    candidate, views = params.train.candidates[name], params.leakage.tta
    if is_frozen_backbone(candidate):
        return frozen_backbone_fit(params, name, x, y)
    if candidate.architecture == "ct_resnet152":  # fine-tuning: the converted weights under paths.backbone
        candidate = resolve_backbone(params, candidate)

    def fit(split: IndexSplit) -> dict[str, np.ndarray]:
        weights = loss_weights(y[split.train], len(params.classes), candidate.loss_weighting, groups[split.train])
        data = SplitArrays(x[split.train], y[split.train], x[split.val], y[split.val], *pixel_statistics(x[split.train]),
                           w_train=weights)
        members = []
        for member in range(params.leakage.ensemble):
            result = train_candidate(name, candidate, params.augment, data, len(params.classes),
                                     params.train.seed + member, callbacks=[], verbose=0)
            log.info("model %d/%d trained in %.0f s (best epoch %d)", member + 1, params.leakage.ensemble,
                     result.seconds, result.best_epoch)
            predict = lambda batch: result.model.predict(batch, batch_size=64, verbose=0)  # noqa: E731
            members.append(plain_and_tta(predict, x[split.test].astype("float32"), views))
        return fold_variants(members, bool(views))

    return fit


def machine_description() -> str:
    """Where the CV ran, for the recipe table: CPU cores or the accelerator Keras sees."""
    import keras

    accelerators = [d for d in keras.distribution.list_devices() if not d.lower().startswith("cpu")]
    if not accelerators:
        return f"{os.cpu_count()} CPU cores"
    kind = "accelerator"
    if keras.backend.backend() == "jax":
        import jax

        kind = jax.devices()[0].device_kind  # e.g. "NVIDIA H100 80GB HBM3"
    return f"{len(accelerators)} x {kind} ({keras.backend.backend()})"


def mean_std_metrics(prefix: str, summary: dict) -> dict[str, float]:
    """{name: {mean, std}} -> {prefix + name + "_mean": ..., prefix + name + "_std": ...} for MLflow."""
    return {f"{prefix}{k}_{stat}": float(v[stat]) for k, v in summary.items() for stat in ("mean", "std")}


def log_cv_to_mlflow(params: Params, name: str, cv: dict, trial: str | None = None) -> None:
    """One MLflow run per CV trial: the recipe as params, mean/std of every score, each fold as a step.

    The run is named after the trial: `trial`, else the DVC experiment (`dvc exp run -n NAME`).
    """
    import mlflow

    configure_mlflow(params.mlflow)
    trial = trial or os.environ.get("DVC_EXP_NAME")
    with mlflow.start_run(run_name=trial or f"grouped-cv {name}"):
        mlflow.set_tags({"stage": "leakage", "kind": "grouped_cv", "candidate": name, "trial": trial or "",
                         "machine": cv.get("machine") or machine_description()})
        mlflow.log_params({k: str(v) for k, v in recipe_params(params, name).items()})
        summary = {k: v for k, v in cv.items() if isinstance(v, dict) and "mean" in v}
        mlflow.log_metrics(mean_std_metrics("cv_", summary))
        for variant, scores in cv.get("variants", {}).items():  # e.g. cv_tta_macro_f1_mean, cv_ensemble_...
            mlflow.log_metrics(mean_std_metrics(f"cv_{variant}_", scores))
        mlflow.log_metric("cv_seconds", float(cv["seconds"]))
        for step, fold in enumerate(cv["per_fold"], start=1):
            mlflow.log_metrics({"fold_macro_f1": fold["macro_f1"], "fold_accuracy": fold["accuracy"],
                                **({"fold_series_macro_f1": fold["series_macro_f1"]} if "series_macro_f1" in fold
                                   else {}),
                                **{f"fold_{n}_macro_f1": v["macro_f1"] for n, v in fold.get("variants", {}).items()}},
                               step=step)
        mlflow.log_dict(cv, "grouped_cv.json")


def run(params: Params, args: argparse.Namespace) -> None:
    settings, prepared = params.leakage, Path(params.paths.prepared)
    tta, ensemble = "+".join(settings.tta), settings.ensemble
    if not (prepared / "split.csv").is_file():
        raise StageError(f"{prepared / 'split.csv'} not found: run the preprocess stage first")
    name = settings.candidate or next(iter(params.train.candidates))
    if name not in params.train.candidates:
        raise StageError(f"leakage.candidate {name!r} is not in train.candidates {sorted(params.train.candidates)}")
    x, y, groups = load_all_images(prepared)
    rows = load_rows(prepared)
    series = rows["study"].to_numpy()
    fit = recipe_fit(params, name, x, y, groups)
    oof, fold_of = np.zeros((len(y), len(params.classes))), np.zeros(len(y), dtype=int)
    oof_shift = np.full_like(oof, np.nan)

    def recording(split: IndexSplit) -> dict[str, np.ndarray]:  # keeps each fold's plain (and shifted) probabilities
        variants = fit(split)
        oof[split.test], fold_of[split.test] = variants[PLAIN], 1 + fold_of.max()
        if SHIFT in variants:
            oof_shift[split.test] = variants[SHIFT]
        return variants

    report: dict = {"candidate": name, "images": int(len(y)), "groups": int(len(np.unique(groups)))}
    if settings.random_split:
        split = random_image_split(y, params.preprocess.test_fraction, params.preprocess.val_fraction, settings.seed)
        log.info("training %s on a RANDOM image-level split (leaky on purpose: %d groups on both sides)", name,
                 len(groups_overlap(split, groups)))
        report["random_split"] = score_split(fit, split, y, params.classes, series,
                                                 fixed_pooling(params.evaluate.series_pooling))
        report["random_split"]["groups_shared_with_test"] = len(set(groups[split.test]) & set(groups[split.train]))
    if settings.cv_folds >= 2:
        folds = []
        try:
            splits = list(grouped_folds(y, groups, settings.cv_folds, params.preprocess.val_fraction, settings.seed))
        except ValueError as exc:
            raise StageError(str(exc)) from None
        began = time.perf_counter()
        for k, split in enumerate(splits, start=1):
            log.info("grouped fold %d/%d: %d train, %d val, %d test images", k, len(splits), len(split.train),
                     len(split.val), len(split.test))
            folds.append(score_split(recording, split, y, params.classes, series,
                                     fixed_pooling(params.evaluate.series_pooling)))
            extra = "".join(f"; {variant_label(n, tta, ensemble)}: macro-F1 {v['macro_f1']:.3f}"
                            for n, v in folds[-1].get("variants", {}).items())
            log.info("fold %d: macro-F1 %.3f, accuracy %.3f, series macro-F1 %.3f (%d series)%s", k,
                     folds[-1]["macro_f1"], folds[-1]["accuracy"], folds[-1]["series_macro_f1"],
                     folds[-1]["series_count"], extra)
        report["grouped_cv"] = {"folds": len(folds), "per_fold": folds, "seconds": time.perf_counter() - began,
                                "machine": machine_description(), **summarise_folds(folds, params.classes),
                                "recipe": recipe_fingerprint(params, name),
                                "folds_fingerprint": folds_fingerprint(rows["key"].tolist(), fold_of)}
        if variants := summarise_variants(folds, params.classes):
            report["grouped_cv"]["variants"] = variants
    shifted = oof_shift if not np.isnan(oof_shift[fold_of > 0]).any() and (fold_of > 0).any() else None
    write_cv_predictions(Path(params.paths.leakage) / CV_PREDICTIONS, name, rows, y, oof, fold_of, params.classes,
                         shifted)
    write_json(Path(params.paths.leakage) / "leakage.json", report)  # first: the scores survive a logging failure
    if "grouped_cv" in report:
        log_cv_to_mlflow(params, name, report["grouped_cv"])
    if "random_split" in report:
        r = report["random_split"]
        log.info("random split: accuracy %.3f, macro-F1 %.3f (compare with the group-aware numbers of evaluate)",
                 r["accuracy"], r["macro_f1"])
    if "grouped_cv" in report:
        cv = report["grouped_cv"]
        log.info("grouped %d-fold CV: macro-F1 %.3f ± %.3f; series macro-F1 %.3f ± %.3f", cv["folds"],
                 cv["macro_f1"]["mean"], cv["macro_f1"]["std"], cv["series_macro_f1"]["mean"],
                 cv["series_macro_f1"]["std"])
        for variant, scores in cv.get("variants", {}).items():
            log.info("  %s: macro-F1 %.3f ± %.3f", variant_label(variant, tta, ensemble),
                     scores["macro_f1"]["mean"], scores["macro_f1"]["std"])


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Score the training recipe on a random image-level split (the leaky number the "
                          "literature reports) and, optionally, by grouped k-fold cross-validation.")
    return run_stage("leakage", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
