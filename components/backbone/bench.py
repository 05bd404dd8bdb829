"""Benchmark: what adapting the CT backbone buys on two CPU cores (`make bench-adapt`; BENCHMARKS.md, issue 24).

Every lever is scored by the leakage stage's grouped k-fold CV (same folds, same head fit) on a cache made once:
layer2's pooled features (mean, max) and layer3's maps (fp16), the input of layer4, of every prepared slice.

    python -m components.backbone.bench --params P levers             # frozen heads, poolings, study verdicts
    python -m components.backbone.bench --params P finetune --lr 1e-5  # layer4 fine-tuned on the cached maps

`finetune` initialises the head with the linear probe on frozen layer4 features (LP-FT), freezes BatchNorm,
trains layer4 with AdamW on epochs drawn by class and series weights, with left-right flips and one-position
shifts of the cached maps, and keeps the epoch with the best grouped-validation macro-F1 (epoch 0 = the probe).
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
from components.lib.ct_resnet import (
    WEIGHTS_FILE,
    assign_weights,
    bottleneck,
    load_weights,
    orientation_layers,
    resnet_layers,
    set_orientation_weights,
)
from components.lib.feeders import loss_weights
from components.lib.folds import grouped_folds
from components.lib.heads import fit_head, fit_with_c, head_probabilities
from components.lib.metrics import classification_metrics, series_metrics
from components.lib.prepared import load_all_images, load_rows

POOLINGS = ("mean", "max", "geometric", "vote", "gem")


def build_cache(prepared: Path, weights: Path, out: Path, batch: int = 16) -> None:
    """layer2 mean+max (N, 1024) and layer3 maps (N, S/16, S/16, 1024) fp16 of every slice, in leakage's order."""
    import keras

    if (out / "l3maps.npy").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    images, _, _ = load_all_images(prepared)
    side = images.shape[1]
    inputs = keras.Input((side, side, 1))
    maps = resnet_layers(orientation_layers(keras.layers.Rescaling(1 / 255.0)(inputs), side), "layer3")
    layer2 = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(maps["layer2"]),
                                         keras.layers.GlobalMaxPooling2D()(maps["layer2"])])
    model = keras.Model(inputs, [layer2, maps["layer3"]])
    set_orientation_weights(model)
    assign_weights(model, load_weights(weights))  # every conv and BatchNorm, shapes checked
    l3 = np.lib.format.open_memmap(out / "l3maps.npy.part", "w+", "float16", (len(images), *model.outputs[1].shape[1:]))
    l2 = np.zeros((len(images), 1024), "float32")
    began = time.perf_counter()
    for start in progress(range(0, len(images), batch), desc="layer2+layer3 cache", unit="batch"):
        pooled, mapped = model.predict_on_batch(images[start:start + batch].astype("float32"))
        l2[start:start + batch], l3[start:start + batch] = pooled, mapped.astype("float16")
    l3.flush()
    np.save(out / "l2pool.npy", l2)
    (out / "l3maps.npy.part").rename(out / "l3maps.npy")
    seconds = time.perf_counter() - began
    (out / "cache.json").write_text(json.dumps({"images": len(images), "seconds": round(seconds, 1),
                                                "images_per_second": round(len(images) / seconds, 2)}))


def layer3_pools(maps: np.ndarray, block: int = 256) -> dict[str, np.ndarray]:
    """mean, max and GeM (p = 3) over the positions of each cached layer3 map."""
    pools = {k: np.zeros((len(maps), maps.shape[-1]), "float32") for k in ("mean", "max", "gem")}
    for s in range(0, len(maps), block):
        m = np.asarray(maps[s:s + block], "float32")
        pools["mean"][s:s + block], pools["max"][s:s + block] = m.mean((1, 2)), m.max((1, 2))
        pools["gem"][s:s + block] = np.cbrt(np.mean(np.maximum(m, 0) ** 3, (1, 2)))
    return pools


def score(oof: np.ndarray, y: np.ndarray, series: np.ndarray, folds, classes: list[str]) -> dict:
    """Mean ± std over folds of slice macro-F1, accuracy, recalls, and series macro-F1 per pooling."""
    rows = []
    for split in folds:
        p, truth = oof[split.test], y[split.test]
        m = classification_metrics(truth, p, classes)
        row = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"],
               **{f"recall_{c}": m["per_class"][c]["recall"] for c in classes}}
        row |= {f"series_{k}": series_metrics(truth, p, list(series[split.test]), classes, k)["macro_f1"]
                for k in POOLINGS}
        rows.append(row)
    return {k: [float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows], ddof=1))] for k in rows[0]} \
        | {"per_fold": [r["macro_f1"] for r in rows]}


def frozen_oof(features: np.ndarray, y: np.ndarray, folds, n_classes: int, cs=(0.01, 0.1, 1.0)) -> np.ndarray:
    """Out-of-fold probabilities of the frozen head (C picked on each fold's grouped validation split)."""
    oof = np.zeros((len(y), n_classes))
    for split in folds:
        head = fit_head(features[split.train], y[split.train], features[split.val], y[split.val], n_classes, list(cs))
        oof[split.test] = head_probabilities(head, features[split.test])
    return oof


def learned_study_verdict(features: np.ndarray, y: np.ndarray, series: np.ndarray, folds, n_classes: int) -> list:
    """Per fold: series macro-F1 of a class-balanced LR on each series' mean slice features (trained per fold)."""
    from sklearn.metrics import f1_score

    from components.common.pooling import series_labels

    def by_series(idx):
        names = sorted(set(series[idx]))
        return (np.stack([features[idx][series[idx] == s].mean(0) for s in names]),
                series_labels(y[idx], series[idx], names))

    scores = []
    for split in folds:
        (xt, yt), (xv, yv), (xs, ys) = by_series(split.train), by_series(split.val), by_series(split.test)
        head = fit_head(xt, yt, xv, yv, n_classes, [0.01, 0.1, 1.0])
        scores.append(float(f1_score(ys, head_probabilities(head, xs).argmax(1), labels=list(range(n_classes)),
                                     average="macro", zero_division=0)))
    return scores


def levers(context: dict) -> dict:
    """Every frozen variant on the cache, with its study verdicts; a learned study verdict beside them."""
    y, series, folds, classes = context["y"], context["series"], context["folds"], context["classes"]
    l2, pools = context["l2"], layer3_pools(context["maps"])
    variants = {"layer3 mean": pools["mean"], "layer3 GeM": pools["gem"],
                "layer2 mean+max, layer3 mean": np.concatenate([l2, pools["mean"]], 1),
                "layer2 mean+max, layer3 mean+GeM": np.concatenate([l2, pools["mean"], pools["gem"]], 1),
                "layer2 mean+max, layer3 mean+max": np.concatenate([l2, pools["mean"], pools["max"]], 1)}
    results = {}
    for name, features in variants.items():
        began = time.perf_counter()
        results[name] = score(frozen_oof(features, y, folds, len(classes)), y, series, folds, classes)
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        learned = learned_study_verdict(features, y, series, folds, len(classes))
        results[name]["series_learned"] = [float(np.mean(learned)), float(np.std(learned, ddof=1))]
        print(f"{name}: slice {results[name]['macro_f1'][0]:.3f} ± {results[name]['macro_f1'][1]:.3f}, series "
              f"(mean) {results[name]['series_mean'][0]:.3f}, learned {results[name]['series_learned'][0]:.3f}",
              flush=True)
    return results


def layer4_model(input_shape: tuple, weights: dict, dropout: float, n_classes: int):
    """layer4 (CT weights, BatchNorm frozen) -> mean pool -> dropout -> softmax; and its pooled-feature model."""
    import keras

    inputs = keras.Input(input_shape)
    x = inputs
    for block in range(3):
        x = bottleneck(x, 512, 2 if block == 0 else 1, block == 0, f"layer4_{block}")
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(
        keras.layers.Dropout(dropout)(pooled))
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model, keras.Model(inputs, pooled)


def predict(model, maps: np.ndarray, index: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(model.predict_on_batch(np.asarray(maps[index[s:s + batch]], "float32")))
                           for s in range(0, len(index), batch)])


def augment_maps(batch: np.ndarray, rng) -> np.ndarray:
    """A slice's left-right flip is a flip of its map's first axis (the orientation transposes); +-1 shifts."""
    flip = rng.random(len(batch)) < 0.5
    batch[flip] = batch[flip, ::-1]
    for i in range(len(batch)):
        batch[i] = np.roll(batch[i], tuple(rng.integers(-1, 2, 2)), (0, 1))
    return batch


def finetune(context: dict, args: argparse.Namespace) -> dict:
    """LP-FT of layer4 on the cached layer3 maps for the folds asked; per epoch: loss, val/test macro-F1, seconds."""
    import keras
    from sklearn.metrics import f1_score

    y, maps, folds, groups = context["y"], context["maps"], context["folds"], context["groups"]
    n = len(context["classes"])
    weights = load_weights(context["weights"])
    f1 = lambda truth, p: float(f1_score(truth, p.argmax(1), average="macro"))  # noqa: E731
    _, extractor = layer4_model(maps.shape[1:], weights, args.dropout, n)
    frozen = predict(extractor, maps, np.arange(len(y)))
    report = {"args": vars(args), "folds": []}
    oof = np.zeros((len(y), n))
    for k in args.folds:
        split, rng = folds[k], np.random.default_rng(args.seed + k)
        keras.utils.set_random_seed(args.seed + k)
        c = fit_head(frozen[split.train], y[split.train], frozen[split.val], y[split.val], n, [0.01, 0.1, 1.0]).c
        kernel, bias = fit_with_c(frozen[split.train], y[split.train], n, c, 0)  # the probe on the training part only
        model, _ = layer4_model(maps.shape[1:], weights, args.dropout, n)
        model.get_layer("probabilities").set_weights([kernel * args.head_scale, bias * args.head_scale])
        model.compile(optimizer=keras.optimizers.AdamW(args.lr, weight_decay=args.weight_decay),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
        draw = loss_weights(y[split.train], n, "class_and_group", groups[split.train])
        probe_test = predict(model, maps, split.test)
        epochs = [{"epoch": 0, "val_f1": f1(y[split.val], predict(model, maps, split.val)),
                   "test_f1": f1(y[split.test], probe_test)}]
        best_test = probe_test
        for epoch in range(1, args.epochs + 1):
            began, losses = time.perf_counter(), []
            picks = rng.choice(split.train, size=args.epoch_images, p=draw / draw.sum())
            for s in range(0, len(picks), args.batch_size):
                chosen = np.sort(picks[s:s + args.batch_size])
                batch = augment_maps(np.asarray(maps[chosen], "float32"), rng) if args.augment else \
                    np.asarray(maps[chosen], "float32")
                losses.append(float(model.train_on_batch(batch, keras.utils.to_categorical(y[chosen], n))))
            seconds = time.perf_counter() - began
            test = predict(model, maps, split.test)  # reported, and kept for the epoch validation picks
            epochs.append({"epoch": epoch, "loss": float(np.mean(losses)), "train_seconds": round(seconds, 1),
                           "val_f1": f1(y[split.val], predict(model, maps, split.val)), "test_f1": f1(y[split.test], test)})
            if epochs[-1]["val_f1"] > max(e["val_f1"] for e in epochs[:-1]):
                best_test = test
            print(f"fold {k + 1} epoch {epoch}: {epochs[-1]}", flush=True)
        oof[split.test] = best_test
        best = max(epochs, key=lambda e: e["val_f1"])
        report["folds"].append({"fold": k + 1, "probe_c": c, "epochs": epochs, "best_epoch": best["epoch"],
                                "test_f1_of_best": best["test_f1"]})
    if sorted(args.folds) == list(range(len(folds))):  # a whole CV: the lever's row, and mixed with the frozen head
        series, classes = context["series"], context["classes"]
        profile = frozen_oof(np.concatenate([context["l2"], layer3_pools(maps)["mean"]], 1), y, folds, n)
        report["cv"] = score(oof, y, series, folds, classes)
        report["cv_mixed_with_frozen_head"] = score((oof + profile) / 2, y, series, folds, classes)
        print(f"CV: fine-tuned {report['cv']['macro_f1']}, mixed with the frozen head "
              f"{report['cv_mixed_with_frozen_head']['macro_f1']}", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params with backbone.enabled and the prepared data")
    parser.add_argument("--cache", default="data/bench-adapt", help="where the layer2/layer3 cache is kept")
    parser.add_argument("--out", default="reports/bench/adapt.json", help="results (JSON, one key per command)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("levers", help="frozen heads on the cache: layers, poolings, study verdicts")
    tune = commands.add_parser("finetune", help="layer4 fine-tuned on the cached layer3 maps (LP-FT)")
    tune.add_argument("--folds", type=lambda t: [int(f) - 1 for f in t.split(",")], default=[0],
                      help="1-based folds, e.g. 1,2,3,4,5 (default: 1)")
    tune.add_argument("--lr", type=float, default=1e-5)
    tune.add_argument("--weight-decay", type=float, default=0.05)
    tune.add_argument("--epochs", type=int, default=4)
    tune.add_argument("--epoch-images", type=int, default=1600)
    tune.add_argument("--batch-size", type=int, default=32)
    tune.add_argument("--dropout", type=float, default=0.3)
    tune.add_argument("--head-scale", type=float, default=0.5, help="probe logits scaled by this at the start")
    tune.add_argument("--no-augment", dest="augment", action="store_false")
    tune.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    quiet_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [bench-adapt] %(message)s", datefmt="%H:%M:%S")
    params = load_params(args.params)
    prepared, cache = Path(params.paths.prepared), Path(args.cache)
    weights = Path(params.paths.backbone) / WEIGHTS_FILE
    if not (prepared / "split.csv").is_file() or not weights.is_file():
        print(f"bench-adapt: no prepared data in {prepared} or no converted backbone {weights}: run `make real-data` "
              "(or the preprocess and backbone stages with these params) first")
        return 2
    build_cache(prepared, weights, cache)
    _, y, groups = load_all_images(prepared)
    context = {"y": y, "groups": groups, "series": load_rows(prepared)["study"].to_numpy(), "classes": params.classes,
               "folds": list(grouped_folds(y, groups, params.leakage.cv_folds or 5, params.preprocess.val_fraction,
                                           params.leakage.seed)),
               "maps": np.load(cache / "l3maps.npy", mmap_mode="r"), "l2": np.load(cache / "l2pool.npy"),
               "weights": weights}
    result = levers(context) if args.command == "levers" else finetune(context, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    saved[args.command if args.command == "levers" else f"finetune lr={args.lr} augment={args.augment}"] = result
    out.write_text(json.dumps(saved, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
