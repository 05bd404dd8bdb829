"""Pure core of train: build, compile and fit one candidate on in-memory arrays."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from components.augment.core import augmentation_layers
from components.common.params import AugmentParams, CandidateParams
from components.train.models import build_model


@dataclass
class SplitArrays:
    """Model inputs (N, S, S, 1) uint8 and integer labels for the train and validation splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    pixel_mean: float
    pixel_variance: float


@dataclass
class TrainResult:
    model: object
    history: dict[str, list[float]]
    seconds: float
    best_epoch: int


def compile_model(model, learning_rate: float, n_classes: int) -> None:
    """Adam + categorical cross-entropy; accuracy, precision, recall and macro-F1 per epoch."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="categorical_crossentropy",
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.F1Score(average="macro", name="f1"),
        ],
    )


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype="float32")[y]


def train_candidate(name: str, candidate: CandidateParams, augment: AugmentParams, data: SplitArrays,
                    n_classes: int, seed: int, callbacks: list, verbose: int = 2) -> TrainResult:
    """Fit one candidate with early stopping on validation loss; return the best-weights model."""
    import keras

    keras.utils.set_random_seed(seed)
    image_size = data.x_train.shape[1]
    model = build_model(name, candidate, image_size, n_classes, augmentation_layers(augment, seed),
                        data.pixel_mean, data.pixel_variance)
    compile_model(model, candidate.learning_rate, n_classes)
    has_val = len(data.y_val) > 0
    monitor = "val_loss" if has_val else "loss"
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, patience=candidate.patience, restore_best_weights=True)
    started = time.perf_counter()
    fitted = model.fit(
        data.x_train.astype("float32"), one_hot(data.y_train, n_classes),
        validation_data=(data.x_val.astype("float32"), one_hot(data.y_val, n_classes)) if has_val else None,
        epochs=candidate.epochs, batch_size=candidate.batch_size, shuffle=True,
        callbacks=[stopper, *callbacks], verbose=verbose,
    )
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in vals] for k, vals in fitted.history.items()}
    best_epoch = int(np.argmin(history[monitor])) + 1
    return TrainResult(model=model, history=history, seconds=seconds, best_epoch=best_epoch)
