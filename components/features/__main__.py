"""CLI: python -m components.features — pooled CT-backbone features of the prepared train/val/test arrays.

A frozen ct_resnet152 candidate fits its head on these (seconds instead of a forward pass per epoch); the
leakage stage's grouped CV reads them too. With `backbone.enabled: false` only features.json is written.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from components.common.cli import StageError, log, run_stage, stage_parser, write_json
from components.common.console import progress
from components.common.params import Params
from components.features.core import RuntimeMismatch, backbone_runtime, cached_blocks, extract
from components.lib.ct_resnet import WEIGHTS_FILE, ConversionError, assign_weights, cut_depths, feature_extractor, load_weights
from components.lib.features import LAYER_WIDTHS, copy_file
from components.lib.prepared import SPLITS
from components.lib.scanner import copier


def through_copies(predict, kind: str, body_crop: bool, stream: int):
    """`predict` of each batch's `kind` copies (components.lib.scanner), one seeded stream per split."""
    copy = copier(kind, body_crop, stream)
    return lambda batch: predict(copy(batch).astype("float32"))


def run(params: Params, args: argparse.Namespace) -> None:
    settings, out = params.backbone, Path(params.paths.features)
    out.mkdir(parents=True, exist_ok=True)
    if not settings.enabled:
        write_json(out / "features.json", {"enabled": False})
        log.info("backbone.enabled is false: no features extracted")
        return
    weights_file, arrays = Path(params.paths.backbone) / WEIGHTS_FILE, Path(params.paths.prepared) / "arrays"
    if not weights_file.is_file():
        raise StageError(f"{weights_file} not found: run the backbone stage first (backbone.enabled: true)")
    if not (arrays / "X_train.npy").is_file():
        raise StageError(f"{arrays} has no X_train.npy: run the preprocess stage first")
    images = {split: np.load(arrays / f"X_{split}.npy", mmap_mode="r") for split in SPLITS}
    side = images["train"].shape[1]
    size = settings.image_size or side
    blocks = cached_blocks(list(settings.layers), list(settings.pooling))
    model = feature_extractor(side, blocks, size, cut_depths(list(settings.layers), settings.deepest_layer_blocks))
    try:
        assign_weights(model, load_weights(weights_file))
    except ConversionError as exc:
        raise StageError(f"{weights_file}: {exc}; re-run the backbone stage") from None
    try:
        predict, check = backbone_runtime(model, settings.runtime,
                                          np.asarray(images["train"][:settings.batch_size], dtype="float32"))
    except RuntimeMismatch as exc:
        raise StageError(str(exc)) from None
    if check:
        log.info("backbone through OpenVINO (f32): within %.1g of Keras on %d training slices",
                 check["max_relative_diff"], check["slices"])
    began, counts = time.perf_counter(), {}
    for kind in ("plain", *settings.copies):
        for stream, (split, x) in enumerate(images.items()):
            batches = -(-len(x) // settings.batch_size)
            bar = lambda it, s=split, n=batches, k=kind: progress(  # noqa: E731
                it, desc=f"features {s}" + ("" if k == "plain" else f" ({k} copy)"), unit="batch", total=n)
            through = predict if kind == "plain" else through_copies(predict, kind, params.preprocess.body_crop, stream)
            np.save(out / copy_file(split, kind), extract(through, x, settings.batch_size, bar))
            counts[split] = int(len(x))
    seconds = time.perf_counter() - began
    total = sum(counts.values())
    write_json(out / "features.json", {
        "enabled": True, "layers": list(settings.layers), "pooling": list(settings.pooling),
        "blocks": [list(b) for b in blocks], "widths": [LAYER_WIDTHS[layer] for layer, _ in blocks],
        "deepest_layer_blocks": settings.deepest_layer_blocks, "image_size": size, "array_size": side,
        "images": counts, "copies": list(settings.copies),
        "body_crop": params.preprocess.body_crop, "runtime": settings.runtime, "runtime_check": check,
        "seconds": round(seconds, 1),
        "images_per_second": round(total / seconds, 2) if seconds else None,
        "machine": f"{os.cpu_count()} CPU cores", "threads": int(os.environ.get("OMP_NUM_THREADS", 0)) or None})
    passes = total * (1 + len(settings.copies))
    log.info("%d images%s -> %s features in %.0f s (%.2f img/s)", total,
             f" and their {' + '.join(settings.copies)} copies" if settings.copies else "", "+".join(settings.layers),
             seconds, passes / seconds if seconds else float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Cache the frozen CT backbone's pooled features of every prepared image.")
    return run_stage("features", run, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
