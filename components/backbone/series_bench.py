"""Benchmark (issue 33): series-level verdicts, body crop, scanner-shift robustness, a second encoder, by grouped CV.

One cache of pooled features per (encoder, view, variant), every prepared slice in leakage's order, made once:

    view     full: the prepared slice as it is;  crop: `crop_to_body` (background set to air, body bounding box)
    variant  plain;  shift: a sharper kernel + noise of 10 grey levels (the outside test's shift, fixed seed);
             aug: a random kernel/noise/contrast/flip per slice (training augmentation, another seed)

    python -m components.backbone.series_bench --params P cache [--encoders ctr152 medsam]
    python -m components.backbone.series_bench --params P cv --seeds 0 1      # the table (reports/bench/series.json)

Every recipe is scored on the same grouped folds (leakage's, one fold set per seed) on plain test series and on
the shifted copy of the same series.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from components.common.console import progress, quiet_runtime
from components.common.params import load_params
from components.lib.ct_resnet import WEIGHTS_FILE, assign_weights, feature_extractor, load_weights
from components.lib.prepared import load_all_images, load_rows
from components.lib.scanner import SEEDS, scanner_copy

VIEWS = ("full", "crop")
VARIANTS = ("plain", "shift", "aug")
MEDSAM_SIDE = 128                                   # LiteMedSAM at 128 px: 4x cheaper than its native 256 (issue 33)
CTR_BLOCKS = [("layer2", "mean"), ("layer2", "max"), ("layer3", "mean"), ("layer3", "max")]  # 512+512+1024+1024
CUT_BLOCKS = (6, 12, 18, 24, 36)                    # `ctr152cut`: layer3 read after this many of its 36 blocks


def transform(image: np.ndarray, view: str, variant: str, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (S, S, 1) slice as the (view, variant) shows it (components.lib.scanner: the change, then the crop)."""
    return scanner_copy(image, variant, rng, view == "crop")


def ctr152_embedder(side: int, weights: Path):
    """uint8 batches -> (N, 3072) layer2 mean+max, layer3 mean+max of the CT ResNet-152."""
    model = feature_extractor(side, CTR_BLOCKS, side)
    assign_weights(model, load_weights(weights))
    return lambda batch: np.asarray(model.predict_on_batch(batch.astype("float32")))


def cut_embedder(side: int, weights: Path, cuts: tuple[int, ...] = CUT_BLOCKS):
    """uint8 batches -> (N, 1024 + 2048 * len(cuts)): layer2 mean+max, then layer3's map after each of `cuts`
    blocks mean+max, from one forward pass (the deepest cut pays for the others)."""
    import keras

    full = feature_extractor(side, CTR_BLOCKS, side)
    assign_weights(full, load_weights(weights))
    pooled = [full.get_layer("layer2_pool").output, full.get_layer("layer2_maxpool").output]
    for k in cuts:
        block = full.get_layer(f"layer3_{k - 1}_out").output
        pooled += [keras.layers.GlobalAveragePooling2D(name=f"cut{k}_pool")(block),
                   keras.layers.GlobalMaxPooling2D(name=f"cut{k}_maxpool")(block)]
    model = keras.Model(full.inputs, keras.layers.Concatenate(name="cuts")(pooled))
    return lambda batch: np.asarray(model.predict_on_batch(batch.astype("float32")))


def cut_columns(k: int, cuts: tuple[int, ...] = CUT_BLOCKS) -> np.ndarray:
    """Columns of `ctr152cut` holding layer2 mean+max and layer3 after `k` blocks mean+max."""
    start = 1024 + 2048 * cuts.index(k)
    return np.concatenate([np.arange(1024), np.arange(start, start + 2048)])


def medsam_embedder(side: int):
    """uint8 batches -> (N, 512) LiteMedSAM neck mean+max at `side` px, through OpenVINO (components.lib.medsam)."""
    from components.lib.medsam import load_encoder, openvino_features

    return openvino_features(load_encoder(side), side)


def build_cache(images: np.ndarray, embed, out: Path, name: str, batch: int = 16,
                views: tuple[str, ...] = VIEWS, variants: tuple[str, ...] = VARIANTS) -> None:
    """`{name}-{view}-{variant}.npy` for every view and variant asked and not cached yet."""
    for variant in variants:
        for view in views:
            target = out / f"{name}-{view}-{variant}.npy"
            if target.is_file():
                continue
            rng = np.random.default_rng(SEEDS.get(variant, 0))
            chunks, began = [], time.perf_counter()
            for start in progress(range(0, len(images), batch), desc=f"{name} {view} {variant}", unit="batch"):
                chunk = np.stack([transform(x, view, variant, rng) for x in images[start:start + batch]])
                chunks.append(np.asarray(embed(chunk), dtype="float32"))
            np.save(target, np.concatenate(chunks))
            seconds = time.perf_counter() - began
            log_file = out / "cache.json"
            saved = json.loads(log_file.read_text()) if log_file.is_file() else {}
            saved[target.stem] = {"images": len(images), "seconds": round(seconds, 1),
                                  "images_per_second": round(len(images) / seconds, 2)}
            log_file.write_text(json.dumps(saved, indent=1))
            logging.info("%s: %d slices in %.0f s", target.name, len(images), seconds)


# ---- the grouped CV of recipes on the caches ------------------------------------------------------------------

ENCODER_COLUMNS = {"ctr152 l2mm+l3m": ("ctr152", slice(0, 2048)), "ctr152 l2mm+l3mm": ("ctr152", slice(0, 3072)),
                   "medsam": ("medsam", slice(None)),
                   "ctr152 l2mm": ("ctr152cut", np.arange(1024)),
                   **{f"ctr152 l2mm+l3[:{k}]mm": ("ctr152cut", cut_columns(k)) for k in CUT_BLOCKS}}


def load_features(cache: Path, encoders: list[str], view: str, variant: str) -> np.ndarray:
    """The named encoders' cached features of one (view, variant), side by side."""
    parts = []
    for name in encoders:
        source, columns = ENCODER_COLUMNS[name]
        parts.append(np.load(cache / f"{source}-{view}-{variant}.npy", mmap_mode="r")[:, columns])
    return np.concatenate([np.asarray(p, dtype="float32") for p in parts], axis=1)


def inner_oof(features: np.ndarray, y: np.ndarray, groups: np.ndarray, index: np.ndarray, c: float,
              n_classes: int, folds: int = 5, seed: int = 0, aug: np.ndarray | None = None,
              series_weights: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold slice probabilities over `index` (grouped `folds`-fold inside it) of the head with C = `c`, and
    each row's inner fold: what the leakage stage's CV gives the product's study model."""
    from sklearn.model_selection import StratifiedGroupKFold

    from components.lib.heads import Head, fit_with_c, head_probabilities

    oof, fold_of = np.zeros((len(index), n_classes)), np.zeros(len(index), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(index)), y[index], groups[index])):
        rows = index[train]
        x, labels = _with_aug(features, aug, rows, y)
        weights = None
        if series_weights:
            from components.lib.feeders import loss_weights

            weights = loss_weights(labels, n_classes, "class_and_group", _repeat_for_aug(groups[rows], aug))
        oof[test] = head_probabilities(Head(*fit_with_c(x, labels, n_classes, c, seed, weights), c),
                                       features[index[test]])
        fold_of[test] = k
    return oof, fold_of


def _repeat_for_aug(values: np.ndarray, aug: np.ndarray | None) -> np.ndarray:
    """Per-row values (e.g. series) for the training rows and, where the recipe augments, their copies."""
    return values if aug is None else np.concatenate([values, values])


def _with_aug(features: np.ndarray, aug: np.ndarray | None, rows: np.ndarray, y: np.ndarray):
    """Training rows, with their augmented copies appended where the recipe augments."""
    if aug is None:
        return features[rows], y[rows]
    return np.concatenate([features[rows], aug[rows]]), np.concatenate([y[rows], y[rows]])


def score_fold(truth_slices: np.ndarray, slice_p: np.ndarray, series: np.ndarray, series_p: np.ndarray,
               order: list[str], series_truth: np.ndarray, classes: list[str]) -> dict:
    """Slice macro-F1 alone and in its series' context, series macro-F1 and per-class series recall."""
    from sklearn.metrics import f1_score, recall_score

    from components.common.study_model import in_context

    labels = list(range(len(classes)))
    f1 = lambda t, p: float(f1_score(t, p.argmax(1), labels=labels, average="macro", zero_division=0))  # noqa: E731
    recalls = recall_score(series_truth, series_p.argmax(1), labels=labels, average=None, zero_division=0)
    return {"slice": f1(truth_slices, slice_p),
            "slice_in_series": f1(truth_slices, in_context(slice_p, series, order, series_p)),
            "series": f1(series_truth, series_p), **{f"series_recall_{c}": float(r) for c, r in zip(classes, recalls)}}


def _parts(recipe: dict) -> list[list[str]]:
    """The encoder groups a recipe fits a head on: one group (early fusion: features side by side), or one group per
    encoder (`fusion: late`: a head each, their slice probabilities averaged)."""
    return [[e] for e in recipe["encoders"]] if recipe.get("fusion") == "late" else [recipe["encoders"]]


def run_recipe(recipe: dict, data: dict, folds: list) -> dict:
    """One recipe over every fold: the slice head(s) on the fold's training series, the product's study model
    (components.common.study_model.fit_study_model, cross-fitted) on the inner out-of-fold predictions of those
    series, both scored on the fold's test series, plain and shifted; and the seconds it took."""
    from components.common.study_model import StudyFitSettings, StudyModel, by_series, fit_study_model
    from components.lib.heads import fit_head, head_probabilities

    y, groups, series, classes = data["y"], data["groups"], data["series"], data["classes"]
    n, parts = len(classes), _parts(recipe)
    if len(parts) > 1 and (recipe["series"] == "learned" or recipe.get("rule")):
        raise ValueError("late fusion is measured with the mean series verdict and no rule only")
    plain = [load_features(data["cache"], part, recipe["view"], "plain") for part in parts]
    shifted = [load_features(data["cache"], part, recipe["view"], "shift") for part in parts] \
        if available(recipe, data["cache"], ("shift",)) else None
    aug = [load_features(data["cache"], part, recipe["view"], "aug") if recipe.get("aug") else None for part in parts]
    settings = StudyFitSettings(recipe["series"], "offsets" if recipe.get("rule") else "none", None)
    rows = []
    for seed, split in folds:
        began = time.perf_counter()
        weighted = bool(recipe.get("series_weights"))
        heads = []
        for features, copies in zip(plain, aug):
            x_train, y_train = _with_aug(features, copies, split.train, y)
            train_groups = _repeat_for_aug(groups[split.train], copies)
            heads.append(fit_head(x_train, y_train, features[split.val], y[split.val], n,
                                  list(recipe.get("cs", [0.01, 0.1, 1.0])),
                                  groups=(train_groups, groups[split.val]) if weighted else None))
        fitted = np.concatenate([split.train, split.val])
        study = StudyModel(recipe["series"])
        if recipe["series"] == "learned" or recipe.get("rule"):
            oof, inner = inner_oof(plain[0], y, groups, fitted, heads[0].c, n, seed=seed, aug=aug[0],
                                   series_weights=weighted)
            study, _ = fit_study_model(oof, y[fitted], series[fitted], inner, classes, settings)
        row = {"seconds": 0.0}
        for name, features in (("plain", plain), ("shift", shifted)):
            if features is None:
                continue
            p = np.mean([head_probabilities(h, f[split.test]) for h, f in zip(heads, features)], axis=0)
            order, series_p, _ = study.by_series(p, series[split.test])
            truth = by_series(p, series[split.test], y[split.test])[2]
            scores = score_fold(y[split.test], p, series[split.test], series_p, order, truth, classes)
            row |= {(k if name == "plain" else f"shift_{k}"): v for k, v in scores.items()}
        row["seconds"] = round(time.perf_counter() - began, 1)
        rows.append(row)
    summary = {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1))] for k in rows[0]}
    return summary | {"per_fold": {k: [round(r[k], 4) for r in rows] for k in ("slice", "series", "shift_series")
                                   if k in rows[0]}}


RECIPES = {
    "R0 today: full, l2mm+l3m, mean": {"encoders": ["ctr152 l2mm+l3m"], "view": "full", "series": "mean"},
    "R1 + rule": {"encoders": ["ctr152 l2mm+l3m"], "view": "full", "series": "mean", "rule": True},
    "R2 series head": {"encoders": ["ctr152 l2mm+l3m"], "view": "full", "series": "learned"},
    "R3 series head + rule": {"encoders": ["ctr152 l2mm+l3m"], "view": "full", "series": "learned", "rule": True},
    "R4 crop, series head + rule": {"encoders": ["ctr152 l2mm+l3m"], "view": "crop", "series": "learned", "rule": True},
    "R3m full, l2mm+l3mm, series head + rule": {"encoders": ["ctr152 l2mm+l3mm"], "view": "full",
                                                "series": "learned", "rule": True},
    "R4m crop, l2mm+l3mm, series head + rule": {"encoders": ["ctr152 l2mm+l3mm"], "view": "crop",
                                                "series": "learned", "rule": True},
    "R4w crop, l2mm+l3mm, series-balanced slices, series head + rule": {
        "encoders": ["ctr152 l2mm+l3mm"], "view": "crop", "series": "learned", "rule": True, "series_weights": True},
    "R5 crop + aug, series head + rule": {"encoders": ["ctr152 l2mm+l3m"], "view": "crop", "series": "learned",
                                          "rule": True, "aug": True},
    "R6 full + aug, series head + rule": {"encoders": ["ctr152 l2mm+l3m"], "view": "full", "series": "learned",
                                          "rule": True, "aug": True},
    # the second encoder (LiteMedSAM at MEDSAM_SIDE px, neck mean + max), on the crop, with the product's mean verdict
    "E0 crop, ctr152 l2mm+l3mm, mean": {"encoders": ["ctr152 l2mm+l3mm"], "view": "crop", "series": "mean"},
    "E1 crop, medsam, mean": {"encoders": ["medsam"], "view": "crop", "series": "mean"},
    "E2 crop, ctr152 + medsam concatenated, mean": {"encoders": ["ctr152 l2mm+l3mm", "medsam"], "view": "crop",
                                                    "series": "mean"},
    "E3 crop, ctr152 and medsam heads averaged (late fusion), mean": {
        "encoders": ["ctr152 l2mm+l3mm", "medsam"], "view": "crop", "series": "mean", "fusion": "late"},
    # issue 36: how much of layer3 the recipe needs (the cost of a slice is ~linear in layer3's blocks); the
    # product's recipe (crop, plain + aug copies, mean verdict) with layer3 read after k of its 36 blocks
    "D00 crop + aug, l2mm only (no layer3), mean": {"encoders": ["ctr152 l2mm"], "view": "crop", "series": "mean",
                                                     "aug": True},
    **{f"D{k:02d} crop + aug, l2mm + layer3 after {k} blocks mm, mean": {
        "encoders": [f"ctr152 l2mm+l3[:{k}]mm"], "view": "crop", "series": "mean", "aug": True} for k in CUT_BLOCKS},
}


def available(recipe: dict, cache: Path, variants: tuple[str, ...] | None = None) -> bool:
    """Whether every cache the recipe reads (or the `variants` named) exists."""
    variants = variants or ("plain", *(("aug",) if recipe.get("aug") else ()))
    return all((cache / f"{ENCODER_COLUMNS[e][0]}-{recipe['view']}-{v}.npy").is_file()
               for e in recipe["encoders"] for v in variants)


def gradcam_outside(params, data: dict, images: np.ndarray, per_class: int = 8) -> dict:
    """Per view: the frozen head (layer2 mean+max, layer3 mean+max) fitted on every slice's cached features, put on
    the whole Keras model, and the share of its Grad-CAM energy outside the body on `per_class` slices per class."""
    from components.common.gradcam import gradcam, outside_body_share
    from components.lib.features import resolve_backbone
    from components.lib.heads import fit_with_c
    from components.lib.models import build_model

    y, classes = data["y"], data["classes"]
    candidate = params.train.candidates["ct_resnet152"].model_copy(
        update={"backbone_pooling": {"layer2": ["mean", "max"], "layer3": ["mean", "max"]}})
    candidate = resolve_backbone(params, candidate)
    picks = np.concatenate([np.flatnonzero(y == k)[np.linspace(0, (y == k).sum() - 1, per_class).astype(int)]
                            for k in range(len(classes))])
    rng, result = np.random.default_rng(0), {}
    for view in VIEWS:
        features = load_features(data["cache"], ["ctr152 l2mm+l3mm"], view, "plain")
        kernel, bias = fit_with_c(features, y, len(classes), 0.1, 0)
        model = build_model("ct_resnet152", candidate, images.shape[1], len(classes), [], 0.0, 1.0)
        model.get_layer("probabilities").set_weights([kernel, bias])
        shown = np.stack([transform(images[i], view, "plain", rng) for i in picks]).astype("float32")
        shares = outside_body_share(gradcam(model, shown), shown[..., 0])
        result[view] = {"overall": float(shares.mean()),
                        **{c: float(shares[k * per_class:(k + 1) * per_class].mean()) for k, c in enumerate(classes)}}
        print(f"Grad-CAM energy outside the body, {view}: {result[view]}", flush=True)
    return result


def conformal_table(params, coverage: float = 0.90) -> dict:
    """The conformal sets of the real-data run's study model under each method (lac, aps) and calibration
    (marginal, Mondrian), certified on its out-of-fold series (leakage's cv_predictions.csv, the study model
    cross-fitted as evaluate fits it): coverage overall and per class, set size, share decided and their accuracy."""
    from components.common.study_model import StudyFitSettings, fit_study_model
    from components.lib.predictions import CV_PREDICTIONS, CV_SPLIT, load_probabilities, read_split

    name = params.leakage.candidate or next(iter(params.train.candidates))
    frame = load_probabilities(Path(params.paths.leakage), CV_PREDICTIONS)
    oof = read_split(frame, name, CV_SPLIT, list(params.classes))
    folds = frame[(frame["candidate"] == name) & (frame["split"] == CV_SPLIT)].sort_values("index")["fold"].to_numpy()
    table = {}
    for method in ("lac", "aps"):
        for mondrian in (False, True):
            settings = StudyFitSettings(params.evaluate.series_pooling, params.evaluate.decision_rule, coverage,
                                        method, mondrian)
            _, figures = fit_study_model(oof.probabilities, oof.labels, np.asarray(oof.series), folds,
                                         list(params.classes), settings)
            summary = figures["certificate"]["summary"]
            key = f"{method}{' mondrian' if mondrian else ''}"
            table[key] = {k: v["estimate"] for k, v in summary.items()}
            print(key, {k: None if v is None else round(v, 3) for k, v in table[key].items()}, flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True, help="a params file with the real-data profile laid over it")
    parser.add_argument("--cache", default="data/series_bench", help="where the feature caches go (git-ignored)")
    parser.add_argument("--out", default="reports/bench/series.json")
    commands = parser.add_subparsers(dest="command", required=True)
    cache_cmd = commands.add_parser("cache", help="feature caches of every view and variant")
    cache_cmd.add_argument("--encoders", nargs="+", default=["ctr152"], choices=["ctr152", "ctr152cut", "medsam"])
    cache_cmd.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    cache_cmd.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    cv_cmd = commands.add_parser("cv", help="grouped CV of every recipe whose caches exist")
    cv_cmd.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    cv_cmd.add_argument("--only", nargs="*", default=None, help="recipe name prefixes (e.g. R0 R3)")
    commands.add_parser("gradcam", help="Grad-CAM energy outside the body of the head on each view")
    commands.add_parser("conformal", help="the real-data run's conformal sets by method and calibration")
    args = parser.parse_args(argv)
    quiet_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [series-bench] %(message)s", datefmt="%H:%M:%S")
    params = load_params(args.params)
    prepared, cache = Path(params.paths.prepared), Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.command == "conformal":
        out = Path(args.out)
        saved = json.loads(out.read_text()) if out.is_file() else {}
        saved["conformal"] = conformal_table(params)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=1))
        return 0
    if params.preprocess.body_crop:
        print("series-bench: the prepared arrays are cropped to the body already (preprocess.body_crop: true); the "
              "bench compares both views itself: run preprocess with body_crop false into paths.prepared first")
        return 2
    if not (prepared / "split.csv").is_file():
        print(f"series-bench: no prepared data in {prepared}: run the preprocess stage with the real-data profile")
        return 2
    images, y, groups = load_all_images(prepared)
    if args.command == "cache":
        for name in args.encoders:
            weights = Path(params.paths.backbone) / WEIGHTS_FILE
            embed = {"ctr152": lambda: ctr152_embedder(images.shape[1], weights),
                     "ctr152cut": lambda: cut_embedder(images.shape[1], weights),
                     "medsam": lambda: medsam_embedder(MEDSAM_SIDE)}[name]()
            build_cache(images, embed, cache, name, views=tuple(args.views), variants=tuple(args.variants))
        return 0
    from components.lib.folds import grouped_folds

    if args.command == "gradcam":
        data = {"y": y, "classes": list(params.classes), "cache": cache}
        out = Path(args.out)
        saved = json.loads(out.read_text()) if out.is_file() else {}
        saved["gradcam_outside_body"] = gradcam_outside(params, data, images)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(saved, indent=1))
        return 0
    data = {"y": y, "groups": groups, "series": load_rows(prepared)["study"].to_numpy().astype(str),
            "classes": list(params.classes), "cache": cache}
    folds = [(seed, split) for seed in args.seeds
             for split in grouped_folds(y, groups, params.leakage.cv_folds or 5, params.preprocess.val_fraction, seed)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    for name, recipe in RECIPES.items():
        if args.only and not any(name.startswith(p) for p in args.only) or not available(recipe, cache):
            continue
        result = run_recipe(recipe, data, folds)
        saved[name] = result | {"seeds": args.seeds, "folds": len(folds)}
        out.write_text(json.dumps(saved, indent=1))
        print(f"{name}: slice {result['slice'][0]:.3f}±{result['slice'][1]:.3f}  in series "
              f"{result['slice_in_series'][0]:.3f}  series {result['series'][0]:.3f}±{result['series'][1]:.3f}  "
              f"shifted {result.get('shift_series', [float('nan')])[0]:.3f}  recall " +
              " ".join(f"{c[0]} {result[f'series_recall_{c}'][0]:.2f}" for c in params.classes) +
              f"  {result['seconds'][0]:.0f} s/fold", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
