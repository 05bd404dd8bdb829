"""Training benchmark: python -m components.train.bench — per candidate, the model's ceiling vs the real feeder.

For each candidate (one subprocess each, so peak memory is its own) it prints parameters, images/s of a
training step on an in-memory tensor, images/s through `fit` on the feeder training uses (tf.data under
TensorFlow, the memory-mapped PyDataset otherwise), their ratio (goal >= 0.9: the input pipeline is not the
bottleneck) and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from components.common.console import progress, quiet_runtime
from components.common.tables import text_table
from components.train.candidates import study_candidates

COLUMNS = ["candidate", "parameters", "synthetic_img_s", "pipeline_img_s", "feeder", "ratio", "peak_rss_mb"]


def timed_callback(warmup: int):
    """A callback noting the time at the end of every batch after `warmup` batches."""
    import keras

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.marks: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 >= warmup:
                self.marks.append(time.perf_counter())

    return BatchClock()


def measure(name: str, size: int, batch: int, warmup: int, steps: int, workers: int) -> dict:
    """Both throughputs for one candidate, in this process."""
    import keras

    from components.common.params import AugmentParams
    from components.lib.augmentation import augmentation_layers
    from components.lib.feeders import batch_feeder, one_hot, tensor_feeder, tensor_feeder_usable
    from components.lib.models import build_model
    from components.lib.training import compile_model

    candidate = study_candidates(batch_size=batch)[name]
    augment = AugmentParams(rotation=0.05, zoom=0.1, contrast=0.2, flip=False)  # a mild policy: the cost of the layers
    model = build_model(name, candidate, size, 4, augmentation_layers(augment, 0), 0.3, 0.05)
    compile_model(model, candidate.learning_rate, 4)
    rng = np.random.default_rng(0)
    n = batch * (warmup + steps)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", rng.integers(0, 255, (n, size, size, 1), dtype=np.uint8))
        np.save(Path(tmp) / "y.npy", rng.integers(0, 4, n))
        x, y = np.load(Path(tmp) / "x.npy", mmap_mode="r"), np.load(Path(tmp) / "y.npy", mmap_mode="r")
        images = keras.ops.convert_to_tensor(np.asarray(x[:batch], dtype="float32"))
        labels = keras.ops.convert_to_tensor(one_hot(np.asarray(y[:batch]), 4))
        for _ in range(warmup):
            model.train_on_batch(images, labels)
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        synthetic = batch * steps / (time.perf_counter() - started)
        clock = timed_callback(warmup)
        if tensor_feeder_usable(x):  # the feeder training would use (components.lib.training.feeders)
            feeder, batches = "tf.data", tensor_feeder(x, y, batch, 4, shuffle=True, seed=0)[0]
        else:
            feeder, batches = "pydataset", batch_feeder(x, y, batch, 4, shuffle=True, seed=0, workers=workers)
        model.fit(batches, epochs=1, steps_per_epoch=warmup + steps, shuffle=False, callbacks=[clock], verbose=0)
        pipeline = batch * (len(clock.marks) - 1) / (clock.marks[-1] - clock.marks[0])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"candidate": name, "parameters": int(model.count_params()), "synthetic_img_s": round(synthetic, 1),
            "pipeline_img_s": round(pipeline, 1), "ratio": round(pipeline / synthetic, 2),
            "peak_rss_mb": round(peak_mb), "feeder": feeder, "backend": keras.backend.backend(),
            "image_size": size, "batch": batch}


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    return text_table(COLUMNS, [[f"{row[c]:,}" if isinstance(row[c], int) else row[c] for c in COLUMNS] for row in rows])


def run_all(args: argparse.Namespace) -> list[dict]:
    """One subprocess per candidate; a candidate that fails is reported, not fatal."""
    rows = []
    for name in progress(args.only.split(","), desc="bench-train", unit="candidate"):
        cmd = [sys.executable, "-m", "components.train.bench", "--one", name, "--size", str(args.size),
               "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(args.steps),
               "--workers", str(args.workers)]
        done = subprocess.run(cmd, capture_output=True, text=True)  # env: quiet_runtime() in main
        if done.returncode != 0:
            print(f"{name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(study_candidates()), help="comma-separated candidate names")
    parser.add_argument("--size", type=int, default=180, help="image side in pixels (the paper's 180)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation) before timing")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--workers", type=int, default=2, help="feeder threads (train.runtime.loader_workers)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    quiet_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [bench-train] %(message)s", datefmt="%H:%M:%S")
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.batch, args.warmup, args.steps, args.workers)))
        return 0
    rows = run_all(args)
    backend = rows[0]["backend"] if rows else "?"
    print(f"\nbackend {backend}, {args.size}x{args.size} px, batch {args.batch}, {args.steps} timed steps, "
          f"{os.cpu_count()} CPU(s)\n")
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if len(rows) == len(args.only.split(",")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
