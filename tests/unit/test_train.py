"""Model building and one real training step on tiny arrays."""

import numpy as np

from components.common.params import AugmentParams, CandidateParams
from components.lib.models import build_model
from components.lib.training import SplitArrays, train_candidate
from tests.tiny import MILD_AUGMENT


def tiny_candidate(**overrides) -> CandidateParams:
    return CandidateParams(**{"filters": [4, 8], "dense_units": 8, "epochs": 2, "batch_size": 4, **overrides})


def test_paper_cnn_shape_and_softmax():
    model = build_model("cnn", tiny_candidate(), 32, 4, [], mean=0.5, variance=0.1)
    out = np.asarray(model.predict(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 1)).astype("float32"), verbose=0))
    assert out.shape == (3, 4)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert [layer.name for layer in model.layers][:2] == ["image", "to_unit"]


def test_training_learns_a_trivial_task_and_augmentation_is_inert_at_inference():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 8)
    x = (rng.integers(0, 40, (32, 24, 24, 1)) + (y * 60)[:, None, None, None]).astype(np.uint8)  # class = brightness
    data = SplitArrays(x, y, x[::4], y[::4], pixel_mean=float(x.mean() / 255), pixel_variance=float((x / 255).var()))
    result = train_candidate("cnn", tiny_candidate(epochs=8, learning_rate=0.01), AugmentParams(**MILD_AUGMENT), data, 4, seed=0,
                             callbacks=[], verbose=0)
    assert set(result.history) >= {"loss", "val_loss", "accuracy", "f1", "precision", "recall"}
    assert result.history["loss"][-1] < result.history["loss"][0]
    first = np.asarray(result.model(x[:4].astype("float32"), training=False))
    second = np.asarray(result.model(x[:4].astype("float32"), training=False))
    assert np.array_equal(first, second)
    assert 1 <= result.best_epoch <= 8


def test_the_generalisation_recipe_trains_weighted_with_every_augmentation_inert_at_inference():
    from components.lib.feeders import loss_weights

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), [14, 8, 6, 4])
    x = (rng.integers(0, 40, (32, 24, 24, 1)) + (y * 60)[:, None, None, None]).astype(np.uint8)
    groups = np.array([f"g{i // 3}" for i in range(32)])
    data = SplitArrays(x, y, x[::4], y[::4], pixel_mean=float(x.mean() / 255), pixel_variance=float((x / 255).var()),
                       w_train=loss_weights(y, 4, "class_and_group", groups))
    candidate = tiny_candidate(architecture="compact_cnn", epochs=6, learning_rate=0.01, intensity_channels=[0.8],
                               weight_decay=1e-4, label_smoothing=0.1, loss_weighting="class_and_group")
    augment = AugmentParams(**{**MILD_AUGMENT, "flip": True}, translate=0.1, brightness=0.1, noise=0.02, blur=1.0, elastic=0.1)
    result = train_candidate("compact", candidate, augment, data, 4, seed=0, callbacks=[], verbose=0)
    assert result.history["loss"][-1] < result.history["loss"][0]
    names = {layer.name for layer in result.model.layers}
    assert {"aug_flip", "aug_translate", "aug_brightness", "aug_noise", "aug_blur", "aug_elastic",
            "dense_window0"} <= names
    first = np.asarray(result.model(x[:4].astype("float32"), training=False))
    assert np.array_equal(first, np.asarray(result.model(x[:4].astype("float32"), training=False)))


def test_early_stopping_can_pick_the_epoch_by_validation_macro_f1_after_a_warm_up():
    from components.lib.training import best_epoch_of, early_stopping_settings

    by_f1 = early_stopping_settings(tiny_candidate(early_stopping="macro_f1", min_epochs=2, patience=3), True)
    assert by_f1 == {"monitor": "val_f1", "mode": "max", "patience": 3, "start_from_epoch": 2}
    assert early_stopping_settings(tiny_candidate(), False)["monitor"] == "loss"
    assert best_epoch_of([0.9, 0.2, 0.5, 0.7, 0.6], by_f1) == 4      # epoch 1's fluke is inside the warm-up
    assert best_epoch_of([0.9, 0.2], by_f1) == 1                      # shorter than the warm-up: all count
    assert best_epoch_of([0.5, 0.3, 0.4], {"mode": "min", "start_from_epoch": 0}) == 2


def test_training_with_f1_early_stopping_reports_a_best_epoch_after_the_warm_up():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 8)
    x = (rng.integers(0, 40, (32, 24, 24, 1)) + (y * 60)[:, None, None, None]).astype(np.uint8)
    data = SplitArrays(x, y, x[::4], y[::4], pixel_mean=float(x.mean() / 255), pixel_variance=float((x / 255).var()))
    candidate = tiny_candidate(epochs=5, learning_rate=0.01, early_stopping="macro_f1", min_epochs=2, patience=2)
    result = train_candidate("cnn", candidate, AugmentParams(**MILD_AUGMENT), data, 4, seed=0, callbacks=[], verbose=0)
    assert 3 <= result.best_epoch <= len(result.history["val_f1"])
