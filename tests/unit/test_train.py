"""Model building and one real training step on tiny arrays."""

import numpy as np

from components.common.params import AugmentParams, CandidateParams
from components.train.core import SplitArrays, train_candidate
from components.train.models import build_model


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
    result = train_candidate("cnn", tiny_candidate(epochs=8, learning_rate=0.01), AugmentParams(), data, 4, seed=0,
                             callbacks=[], verbose=0)
    assert set(result.history) >= {"loss", "val_loss", "accuracy", "f1", "precision", "recall"}
    assert result.history["loss"][-1] < result.history["loss"][0]
    first = np.asarray(result.model(x[:4].astype("float32"), training=False))
    second = np.asarray(result.model(x[:4].astype("float32"), training=False))
    assert np.array_equal(first, second)
    assert 1 <= result.best_epoch <= 8
