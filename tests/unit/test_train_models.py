"""Candidate architectures: every one builds, adapts grayscale to its own input range, and round-trips."""

import re

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from components.common.params import CandidateParams
from components.lib.models import APPLICATION_RANGE, WeightsError, build_model, model_input_size, resolve_weights
from components.train.candidates import STUDY_CANDIDATES, study_candidates
from tests.tiny import REPO

MEAN, VARIANCE = 0.3, 0.04


def predict(model, n: int, size: int) -> np.ndarray:
    images = np.random.default_rng(0).integers(0, 255, (n, size, size, 1)).astype("float32")
    return np.asarray(model.predict(images, verbose=0))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STUDY_CANDIDATES))
def test_every_study_candidate_builds_and_outputs_probabilities(name):
    candidate = study_candidates()[name]
    model = build_model(name, candidate, 32, 4, [], MEAN, VARIANCE)
    out = predict(model, 2, 32)
    assert out.shape == (2, 4)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-4)
    assert model.input_shape == (None, 32, 32, 1)  # grayscale in; 3 channels only inside the model


def test_inception_is_resized_up_to_its_minimum_inside_the_model():
    assert model_input_size(CandidateParams(architecture="inception_v3"), 48) == 75
    assert model_input_size(CandidateParams(architecture="vit", image_size=96), 48) == 96
    assert model_input_size(CandidateParams(), 48) == 48


@pytest.mark.parametrize("architecture", sorted(APPLICATION_RANGE))
def test_gray_is_replicated_into_the_pixel_range_the_application_expects(architecture):
    import keras

    model = build_model("m", CandidateParams(architecture=architecture, width=1.0), 32, 4, [], MEAN, VARIANCE)
    adapter = keras.Model(model.input, model.get_layer(f"{architecture}_range").output)
    images = np.array([0.0, 255.0]).reshape(2, 1, 1, 1) * np.ones((2, 32, 32, 1))
    out = np.asarray(adapter.predict(images.astype("float32"), verbose=0))
    assert out.shape[0] == 2 and out.shape[-1] == 3
    black, white = out[0, 0, 0], out[1, 0, 0]
    expected = {"efficientnet_b0": ([0] * 3, [255] * 3), "mobilenet_v2": ([-1] * 3, [1] * 3),
                "inception_v3": ([-1] * 3, [1] * 3),
                "resnet50": ([-103.939, -116.779, -123.68], [151.061, 138.221, 131.32])}[architecture]
    assert np.allclose(black, expected[0], atol=1e-3) and np.allclose(white, expected[1], atol=1e-3)


def test_vit_saves_and_loads_without_custom_objects(tmp_path):
    import keras

    candidate = CandidateParams(architecture="vit", patch_size=8, vit_dim=16, vit_depth=1, vit_heads=2)
    model = build_model("vit", candidate, 32, 4, [], MEAN, VARIANCE)
    model.save(tmp_path / "vit.keras")
    loaded = keras.saving.load_model(tmp_path / "vit.keras")  # safe mode, no custom_objects
    assert np.allclose(predict(model, 3, 32), predict(loaded, 3, 32), atol=1e-5)


def test_weights_none_imagenet_or_an_existing_file(tmp_path):
    assert resolve_weights("none") is None and resolve_weights("imagenet") == "imagenet"
    (tmp_path / "notop.h5").write_bytes(b"x")
    assert resolve_weights(str(tmp_path / "notop.h5")).endswith("notop.h5")
    with pytest.raises(WeightsError, match="not found: pre-place"):
        resolve_weights(str(tmp_path / "missing.h5"))


def test_params_refuse_a_width_or_weights_the_architecture_cannot_take():
    with pytest.raises(ValidationError, match="fixed width"):
        CandidateParams(architecture="resnet50", width=0.5)
    with pytest.raises(ValidationError, match="no pretrained weights"):
        CandidateParams(architecture="vit", weights="imagenet")
    with pytest.raises(ValidationError):
        CandidateParams(architecture="alexnet")


def test_commented_candidates_in_params_yaml_match_the_study_list():
    commented = re.findall(r"^    # (\w+):\s+(\{.*\})$", (REPO / "params.yaml").read_text(), flags=re.M)
    listed = {name: CandidateParams(**yaml.safe_load(body)) for name, body in commented}
    assert set(listed) == set(STUDY_CANDIDATES)  # the paper's CNN is listed too, beside the default candidate
    assert listed == study_candidates()


def test_compact_cnn_pools_globally_and_round_trips(tmp_path):
    import keras

    candidate = CandidateParams(architecture="compact_cnn", filters=[4, 8], dense_units=8, dropout=0.1)
    model = build_model("compact", candidate, 32, 4, [], MEAN, VARIANCE)
    assert {"avg_pool", "max_pool"} <= {layer.name for layer in model.layers}
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert np.allclose(predict(model, 2, 32), predict(again, 2, 32), atol=1e-5)


def test_intensity_channel_keeps_only_pixels_above_its_threshold():
    import keras

    candidate = CandidateParams(architecture="compact_cnn", filters=[4], dense_units=4, intensity_channels=[0.5])
    model = build_model("m", candidate, 8, 4, [], MEAN, VARIANCE)
    windows = keras.Model(model.input, model.get_layer("input_windows").output)
    images = np.array([0.0, 102.0, 191.25, 255.0]).reshape(4, 1, 1, 1) * np.ones((4, 8, 8, 1))
    out = np.asarray(windows.predict(images.astype("float32"), verbose=0))
    assert out.shape == (4, 8, 8, 2)
    assert np.allclose(out[:, 0, 0, 1], [0.0, 0.0, 0.5, 1.0], atol=1e-5)  # 0.4 -> 0, 0.75 -> 0.5, 1 -> 1
    assert np.allclose(out[:, 0, 0, 0], (images[:, 0, 0, 0] / 255 - MEAN) / np.sqrt(VARIANCE), atol=1e-4)


def test_intensity_channels_are_refused_where_the_body_wants_three_grey_channels():
    with pytest.raises(ValidationError, match="intensity_channels"):
        CandidateParams(architecture="resnet50", intensity_channels=[0.8])
    with pytest.raises(ValidationError, match="threshold"):
        CandidateParams(architecture="compact_cnn", intensity_channels=[1.2])


def test_roi_crops_inside_the_model_so_the_body_sees_only_the_region(tmp_path):
    import keras

    candidate = CandidateParams(architecture="compact_cnn", filters=[4, 8], dense_units=8, roi=[0.5, 1.0, 0.25, 0.75],
                                global_pooling="max")
    model = build_model("roi", candidate, 32, 4, [], MEAN, VARIANCE)
    assert model.input_shape == (None, 32, 32, 1)
    assert tuple(model.get_layer("roi_crop").output.shape[1:3]) == (16, 16)
    assert "avg_pool" not in {layer.name for layer in model.layers}
    images = np.zeros((2, 32, 32, 1), "float32")
    images[1, :16] = 255.0  # changes only outside the region: the prediction cannot move
    out = np.asarray(model.predict(images, verbose=0))
    assert np.allclose(out[0], out[1], atol=1e-6)
    model.save(tmp_path / "m.keras")
    assert np.allclose(np.asarray(keras.saving.load_model(tmp_path / "m.keras").predict(images, verbose=0)), out)


def test_roi_is_refused_when_malformed_or_on_a_body_that_needs_the_whole_slice():
    for roi in ([0.5, 0.4, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.2, 0.0, 1.0]):
        with pytest.raises(ValidationError, match="roi"):
            CandidateParams(architecture="compact_cnn", roi=roi)
    with pytest.raises(ValidationError, match="roi"):
        CandidateParams(architecture="resnet50", roi=[0.0, 0.5, 0.0, 1.0])


def test_softmax_pooling_is_a_smooth_maximum_that_saves_and_leaves_grad_cam_on_the_last_conv(tmp_path):
    import keras

    from components.common.gradcam import find_last_conv_layer
    from components.lib.models import softmax_pooling

    maps = np.zeros((2, 4, 5, 3), "float32")
    maps[0, 1, 2] = [6.0, 0.0, 1.0]  # one bright position in channel 0, a faint one in channel 2
    maps[1] = 1.0  # a flat map: every weighting gives its value
    inputs = keras.Input((4, 5, 3))
    for temperature, near_max in ((0.05, False), (8.0, True)):
        pooled = np.asarray(keras.Model(inputs, softmax_pooling(inputs, temperature))(maps))
        assert np.allclose(pooled[1], 1.0, atol=1e-5)
        mean, peak = maps[0].mean(axis=(0, 1)), maps[0].max(axis=(0, 1))
        assert np.all((pooled[0] >= mean - 1e-5) & (pooled[0] <= peak + 1e-5))
        assert np.isclose(pooled[0, 0], peak[0], atol=1e-3) == near_max  # cool = near the mean, hot = the max
    candidate = CandidateParams(architecture="compact_cnn", filters=[4, 8], dense_units=8, global_pooling="softmax")
    model = build_model("soft", candidate, 32, 4, [], MEAN, VARIANCE)
    assert find_last_conv_layer(model) == "conv2b"  # the pooling's scores are no convolution Grad-CAM would pick
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 1)).astype("float32")
    out = np.asarray(model.predict(images, verbose=0))
    model.save(tmp_path / "m.keras")
    assert np.allclose(np.asarray(keras.saving.load_model(tmp_path / "m.keras").predict(images, verbose=0)), out, atol=1e-6)
