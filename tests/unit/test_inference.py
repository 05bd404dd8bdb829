"""components.common.inference: the OpenVINO form of a Keras model scores as the Keras one does, both outputs, and a
conversion that does not is refused with its figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from components.common.inference import (  # noqa: E402
    KerasScorer,
    OpenVinoScorer,
    check_conversion,
    convert,
    score,
)

CLASSES = 4


def small_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))


def study_means(probabilities: np.ndarray, series: list[str]) -> dict[str, np.ndarray]:
    """Mean pooling per series, the study verdict's simplest form."""
    return {s: probabilities[[i for i, t in enumerate(series) if t == s]].mean(axis=0) for s in set(series)}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 32, 32), dtype=np.uint8)


def test_the_converted_model_gives_the_keras_probabilities_and_embedding(tmp_path: Path, pixels) -> None:
    model = small_model(0)
    ir_file = convert(model, tmp_path / "openvino")
    assert ir_file.is_file() and ir_file.with_suffix(".bin").is_file()
    keras_p, keras_e = score(KerasScorer(model), pixels, batch=16)
    seen = []
    ov_p, ov_e = score(OpenVinoScorer(ir_file), pixels, batch=16, on_batch=seen.append)
    assert seen == [16, 16, 8] and ov_p.shape == (40, CLASSES) and ov_e.shape == keras_e.shape == (40, 8)
    assert np.abs(ov_p - keras_p).max() < 1e-5 and np.abs(ov_e - keras_e).max() < 1e-4
    check = check_conversion(keras_p, ov_p, [f"s{i // 5}" for i in range(40)], study_means, 1e-3, 0.99)
    assert check.passed and check.slices == 40 and check.series == 8 and check.series_agreement == 1.0


def test_a_wrong_conversion_is_refused_with_its_figures(tmp_path: Path, pixels) -> None:
    right, wrong = small_model(0), small_model(1)  # the same graph, other weights: a conversion gone wrong
    series = [f"s{i // 5}" for i in range(40)]
    keras_p, _ = score(KerasScorer(right), pixels)
    wrong_p, _ = score(OpenVinoScorer(convert(wrong, tmp_path / "wrong")), pixels)
    check = check_conversion(keras_p, wrong_p, series, study_means, 1e-3, 0.99)
    assert not check.passed and check.max_probability_diff > 1e-3
    assert "max probability difference" in check.summary() and "allowed 0.001" in check.summary()
    with pytest.raises(ValueError, match="cannot compare"):
        check_conversion(keras_p, wrong_p[:10], series, study_means, 1e-3, 0.99)


def test_a_series_verdict_that_flips_refuses_even_within_the_probability_tolerance() -> None:
    keras_p = np.array([[0.5004, 0.4996, 0, 0], [0.6, 0.4, 0, 0]])
    converted = np.array([[0.4996, 0.5004, 0, 0], [0.6, 0.4, 0, 0]])  # 8e-4 apart, one slice and its series flip
    check = check_conversion(keras_p, converted, ["a", "b"], study_means, 1e-3, 0.5)
    assert check.max_probability_diff < 1e-3 and check.slice_agreement == 0.5 and check.series_agreement == 0.5
    assert not check.passed


def test_studies_that_move_together_refuse_even_when_every_slice_is_within_its_tolerance() -> None:
    keras_p = np.tile([0.7, 0.3, 0.0, 0.0], (6, 1))
    converted = np.tile([0.55, 0.45, 0.0, 0.0], (6, 1))  # every slice 0.15 off, the same way: the study too
    series = ["a"] * 3 + ["b"] * 3
    check = check_conversion(keras_p, converted, series, study_means, 0.3, 0.99, 0.05)
    assert check.slice_agreement == check.series_agreement == 1.0 and check.max_probability_diff <= 0.3
    assert check.max_study_probability_diff == pytest.approx(0.15) and not check.passed
    assert "0.15 on a study (allowed 0.05)" in check.summary()
    scattered = keras_p + np.array([[-0.15, 0.15, 0, 0], [0.15, -0.15, 0, 0], [0, 0, 0, 0]] * 2)  # slices cancel out
    assert check_conversion(keras_p, scattered, series, study_means, 0.3, 0.99, 0.05).passed


def test_the_int8_form_is_quantised_and_still_scores_like_the_keras_model(tmp_path: Path, pixels) -> None:
    from components.common.inference import quantize

    model = small_model(0)
    ir_file = convert(model, tmp_path / "openvino")
    f32_ops = {op.get_type_name() for op in _ops(ir_file)}
    quantize(ir_file, pixels[:20], subset=10)
    int8_ops = {op.get_type_name() for op in _ops(ir_file)}
    assert "FakeQuantize" in int8_ops and "FakeQuantize" not in f32_ops
    matmul_inputs = {node.get_node().get_type_name() for op in _ops(ir_file) if op.get_type_name() == "MatMul"
                     for node in op.input_values()}
    assert matmul_inputs and "FakeQuantize" not in matmul_inputs  # the Dense layers stay f32 (the head's scales)
    keras_p, _ = score(KerasScorer(model), pixels[20:])
    int8_p, _ = score(OpenVinoScorer(ir_file, "int8"), pixels[20:])
    assert int8_p.shape == keras_p.shape and np.abs(int8_p - keras_p).max() < 0.1
    assert np.mean(int8_p.argmax(1) == keras_p.argmax(1)) >= 0.8
    with pytest.raises(ValueError, match="calibration slices"):
        quantize(ir_file, pixels[:0])


def _ops(ir_file: Path):
    import openvino as ov

    return ov.Core().read_model(str(ir_file)).get_ops()


def test_a_trained_model_with_augmentation_and_batch_norm_converts_to_what_keras_computes(tmp_path: Path, pixels):
    """The default's compact CNN: a RandomFlip (training only) whose random ops OpenVINO cannot convert, and batch
    normalisation whose moving statistics a SavedModel export got wrong."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.RandomFlip("horizontal", name="aug_flip")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalMaxPooling2D()(keras.layers.ReLU()(x))
    x = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))
    gamma, beta, _, _ = model.get_layer("bn").get_weights()
    model.get_layer("bn").set_weights([gamma * 1.7, beta - 0.3, np.full(4, 0.2), np.full(4, 0.05)])  # "trained"
    keras_p, keras_e = score(KerasScorer(model), pixels)
    ov_p, ov_e = score(OpenVinoScorer(convert(model, tmp_path / "openvino")), pixels)
    assert np.abs(ov_p - keras_p).max() < 1e-5 and np.abs(ov_e - keras_e).max() < 1e-4
    assert "aug_flip" in [layer.name for layer in model.layers]  # the model itself is left as it was
