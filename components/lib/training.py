"""The training loop train and leakage share: build, compile and fit one candidate on (memory-mapped) arrays,
resumable per epoch."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.common.params import AugmentParams, CandidateParams, RuntimeParams
from components.lib.augmentation import augmentation_layers
from components.lib.batchnorm import fuse_batch_normalization
from components.lib.feeders import batch_feeder, tensor_feeder, tensor_feeder_usable
from components.lib.models import SetupError, build_model

STATE_FILE, LAST_MODEL, BEST_WEIGHTS = "state.json", "last.keras", "best_weights.npz"


@dataclass
class SplitArrays:
    """Model inputs (N, S, S, 1) uint8 and integer labels for the train and validation splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    pixel_mean: float
    pixel_variance: float
    w_train: np.ndarray | None = None  # per-image loss weights (class / scan-series balance); None = equal


@dataclass
class TrainResult:
    model: object
    history: dict[str, list[float]]
    seconds: float
    best_epoch: int
    resumed_from_epoch: int = 0
    runtime: dict = field(default_factory=dict)


def learning_rate_for(candidate: CandidateParams, steps_per_epoch: int):
    """The candidate's learning rate: a constant, or a cosine decay over every step of its epochs (to 5%)."""
    import keras

    if candidate.lr_schedule == "constant":
        return candidate.learning_rate
    return keras.optimizers.schedules.CosineDecay(candidate.learning_rate, candidate.epochs * max(steps_per_epoch, 1),
                                                  alpha=0.05)


def compile_model(model, learning_rate, n_classes: int, jit_compile="auto", weight_decay: float = 0.0,
                  label_smoothing: float = 0.0) -> None:
    """Adam (AdamW with weight decay) + categorical cross-entropy; accuracy, precision, recall, macro-F1 per epoch.

    `learning_rate` is a float or a Keras schedule (see `learning_rate_for`).
    """
    import keras

    optimizer = (keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay) if weight_decay > 0
                 else keras.optimizers.Adam(learning_rate))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.F1Score(average="macro", name="f1"),
        ],
        jit_compile=jit_compile,
    )


def configure_runtime(runtime: RuntimeParams) -> dict:
    """Apply mixed precision and the distribution from params; return what was actually used."""
    import keras

    devices = keras.distribution.list_devices()
    accelerated = any(not d.lower().startswith("cpu") for d in devices)
    policy = "mixed_float16" if runtime.mixed_precision and accelerated else "float32"
    keras.config.set_dtype_policy(policy)
    used = {"backend": keras.backend.backend(), "devices": len(devices), "accelerated": accelerated,
            "dtype_policy": policy, "distribution": "none"}
    if runtime.distribution == "data_parallel":
        if keras.backend.backend() != "jax":
            raise SetupError("distribution: data_parallel needs the JAX backend (run with KERAS_BACKEND=jax); "
                             f"this process uses {keras.backend.backend()}")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        used["distribution"] = f"data_parallel over {len(devices)} device(s)"
    return used


def fingerprint(candidate: CandidateParams, augment: AugmentParams, seed: int, data: SplitArrays,
                n_classes: int) -> str:
    """What a checkpoint must match to be resumed: params, seed and the shape of the data."""
    key = json.dumps([candidate.model_dump(), augment.model_dump(), seed, n_classes, list(data.x_train.shape),
                      list(data.x_val.shape), data.pixel_mean, data.pixel_variance], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_checkpoint(folder: Path | None, expected: str) -> dict | None:
    """The saved state of a killed run with the same fingerprint, or None (nothing to resume)."""
    if folder is None or not (folder / STATE_FILE).is_file() or not (folder / LAST_MODEL).is_file():
        return None
    state = json.loads((folder / STATE_FILE).read_text())
    return state if state.get("fingerprint") == expected else None


def clear_checkpoint(folder: Path | None) -> None:
    """Drop a candidate's checkpoint once its outputs are safely written."""
    if folder is not None and folder.exists():
        shutil.rmtree(folder)


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary sibling and rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)


def early_stopping_settings(candidate: CandidateParams, has_val: bool) -> dict:
    """EarlyStopping keyword arguments: which score, which direction, and the epochs before it may act."""
    # macro_f1: balanced training shifts the priors, so validation loss can rise while F1 improves
    score, mode = ("f1", "max") if candidate.early_stopping == "macro_f1" else ("loss", "min")
    return {"monitor": f"{'val_' if has_val else ''}{score}", "mode": mode, "patience": candidate.patience,
            "start_from_epoch": candidate.min_epochs}


def best_epoch_of(scores: list[float], stopping: dict) -> int:
    """1-based epoch with the best monitored score, counting only epochs early stopping may pick."""
    first = stopping["start_from_epoch"] if len(scores) > stopping["start_from_epoch"] else 0
    considered = np.asarray(scores[first:], dtype=float)
    return first + 1 + int(np.argmax(considered) if stopping["mode"] == "max" else np.argmin(considered))


def resumable_callbacks(folder: Path, key: str, stopping: dict, state: dict | None, extra: dict):
    """EarlyStopping that survives a restart, plus a callback saving model, best weights and state each epoch."""
    import keras

    class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state:
                self.wait, self.best, self.best_epoch = state["wait"], state["best"], state["best_epoch"]
                with np.load(folder / BEST_WEIGHTS) as saved:
                    self.best_weights = [saved[f"w{i}"] for i in range(len(saved.files))]

    stopper = ResumableEarlyStopping(restore_best_weights=True, **stopping)

    class EpochCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history = {k: list(v) for k, v in (state or {}).get("history", {}).items()}
            self.seconds_before = (state or {}).get("seconds", 0.0)  # training time of the killed run(s)
            self.began = time.perf_counter()

        def on_train_begin(self, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            for name, value in (logs or {}).items():
                self.history.setdefault(name, []).append(float(value))
            folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / LAST_MODEL, self.model.save)
            if stopper.best_epoch == epoch and stopper.best_weights is not None:
                _atomic_write(folder / BEST_WEIGHTS, lambda p: np.savez(
                    p, **{f"w{i}": np.asarray(w) for i, w in enumerate(stopper.best_weights)}))
            payload = {"fingerprint": key, "epochs_done": epoch + 1, "history": self.history, "wait": stopper.wait,
                       "best": None if stopper.best is None else float(stopper.best), "best_epoch": stopper.best_epoch,
                       "stopped": bool(self.model.stop_training),
                       "seconds": self.seconds_before + time.perf_counter() - self.began, **extra}
            _atomic_write(folder / STATE_FILE, lambda p: p.write_text(json.dumps(payload)))

    return stopper, EpochCheckpoint()


def feeders(candidate: CandidateParams, data: SplitArrays, n_classes: int, seed: int, start: int, epochs: int,
            runtime: RuntimeParams):
    """Train and validation batches for epochs start..epochs-1: (train, val, steps_per_epoch, feeder name).

    tf.data under TensorFlow when the images fit in memory (no Python per batch), else the memmap PyDataset;
    both give the same batches in the same order.
    """
    feed = dict(batch_size=candidate.batch_size, n_classes=n_classes, seed=seed)
    sampling = dict(weights=data.w_train, sample_by_weight=candidate.weighted_sampling,
                    epoch_images=candidate.epoch_images)
    has_val = len(data.y_val) > 0
    if tensor_feeder_usable(data.x_train, data.x_val):
        train, steps = tensor_feeder(data.x_train, data.y_train, shuffle=True, first_epoch=start,
                                     last_epoch=max(epochs, start + 1), **sampling, **feed)
        val = tensor_feeder(data.x_val, data.y_val, shuffle=False, **feed)[0] if has_val else None
        return train, val, steps, "tf.data"
    feed["workers"] = runtime.loader_workers
    train = batch_feeder(data.x_train, data.y_train, shuffle=True, first_epoch=start, **sampling, **feed)
    val = batch_feeder(data.x_val, data.y_val, shuffle=False, **feed) if has_val else None
    return train, val, None, "pydataset"


def train_candidate(name: str, candidate: CandidateParams, augment: AugmentParams, data: SplitArrays,
                    n_classes: int, seed: int, callbacks: list, verbose: int = 2, checkpoint_dir: Path | None = None,
                    runtime: RuntimeParams = RuntimeParams(), extra_state: dict | None = None) -> TrainResult:
    """Fit one candidate with early stopping on validation loss; return the best-weights model.

    With `checkpoint_dir`, every epoch saves the model, optimizer and early-stopping state there, and a call
    with the same params after a kill resumes from the last completed epoch.
    """
    import keras

    used = configure_runtime(runtime)
    has_val = len(data.y_val) > 0
    stopping = early_stopping_settings(candidate, has_val)
    monitor = stopping["monitor"]
    key = fingerprint(candidate, augment, seed, data, n_classes)
    state = read_checkpoint(checkpoint_dir, key)
    start = state["epochs_done"] if state else 0
    keras.utils.set_random_seed(seed + start)
    if state:
        model = keras.saving.load_model(checkpoint_dir / LAST_MODEL)
    else:
        model = build_model(name, candidate, data.x_train.shape[1], n_classes, augmentation_layers(augment, seed),
                            data.pixel_mean, data.pixel_variance)
        steps = math.ceil((candidate.epoch_images or len(data.y_train)) / candidate.batch_size)
        compile_model(model, learning_rate_for(candidate, steps), n_classes, runtime.jit_compile,
                      candidate.weight_decay, candidate.label_smoothing)
    used["fused_batchnorm_layers"] = fuse_batch_normalization(model) if runtime.fused_batchnorm else 0
    if checkpoint_dir is not None:
        stopper, saver = resumable_callbacks(checkpoint_dir, key, stopping, state, extra_state or {})
        own = [stopper, saver]
    else:
        stopper, saver = keras.callbacks.EarlyStopping(restore_best_weights=True, **stopping), None
        own = [stopper]
    epochs = start if state and state["stopped"] else candidate.epochs
    train, val, steps, used["feeder"] = feeders(candidate, data, n_classes, seed, start, epochs, runtime)
    started = time.perf_counter()
    fitted = model.fit(train, validation_data=val, epochs=epochs, initial_epoch=start,
                       steps_per_epoch=steps, shuffle=False,  # the feeders' order is already (seed, epoch)'s
                       callbacks=[*own, *callbacks], verbose=verbose)
    seconds = time.perf_counter() - started + (saver.seconds_before if saver else 0.0)
    history = saver.history if saver else {k: [float(v) for v in vals] for k, vals in fitted.history.items()}
    best_epoch = best_epoch_of(history[monitor], stopping)
    return TrainResult(model=model, history=history, seconds=seconds, best_epoch=best_epoch,
                       resumed_from_epoch=start, runtime={**used, "jit_compile": bool(model.jit_compile)})
