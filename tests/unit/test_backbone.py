"""The CT backbone on tiny fixtures: conversion mapping, orientation, the Keras graph, the frozen head, params."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from components.backbone.core import convert_state_dict, deflate_kernel
from components.common.params import BackboneParams, CandidateParams
from components.features.core import extract
from components.lib.ct_resnet import (
    ConversionError,
    assign_weights,
    feature_extractor,
    load_weights,
    orientation_layers,
    save_weights,
    set_orientation_weights,
)
from components.lib.features import layer_columns
from components.lib.heads import fit_head, head_probabilities

TINY = dict(depths=(1, 1, 1, 1), width=4)  # one bottleneck per layer, 4 stem channels


def fake_state(depths=(1, 1, 1, 1), width: int = 4, prefix: str = "visual_encoder.model.encode_image.i3_resnet.",
               seed: int = 0) -> dict:
    """A random 3-D ResNet state dict in the checkpoint's layout (torchvision names, (out, in, d, h, w) kernels)."""
    rng = np.random.default_rng(seed)
    state: dict = {}

    def conv(name, out, inp, k, d=3):
        state[f"{prefix}{name}.weight"] = rng.normal(0, 0.1, (out, inp, d, k, k)).astype("float32")

    def bn(name, n):
        state.update({f"{prefix}{name}.weight": rng.uniform(0.5, 1.5, n), f"{prefix}{name}.bias": rng.normal(0, .1, n),
                      f"{prefix}{name}.running_mean": rng.normal(0, .1, n),
                      f"{prefix}{name}.running_var": rng.uniform(0.5, 1.5, n),
                      f"{prefix}{name}.num_batches_tracked": 7})

    conv("conv1", width, 3, 7), bn("bn1", width)
    inplanes = width
    for i, blocks in enumerate(depths):
        planes = width * 2 ** i
        for b in range(blocks):
            p = f"layer{i + 1}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1, 1), bn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1, 1), bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["visual_encoder.other_head.weight"] = np.zeros(3)  # not the backbone: dropped by the prefix
    return state


def test_conversion_deflates_over_depth_and_sums_conv1_over_its_grey_channels():
    state = fake_state()
    converted = convert_state_dict(state)
    key = "visual_encoder.model.encode_image.i3_resnet."
    w1 = state[key + "conv1.weight"]                                   # (4, 3, 3, 7, 7)
    assert converted["conv1"][0].shape == (7, 7, 1, 4)
    assert np.allclose(converted["conv1"][0][..., 0, :], w1.sum(axis=(1, 2)).transpose(1, 2, 0))
    conv2 = state[key + "layer2.0.conv2.weight"]                       # (8, 8, 3, 3, 3)
    assert np.allclose(converted["layer2_0_conv2"][0], conv2.sum(axis=2).transpose(2, 3, 1, 0))
    gamma, beta, mean, var = converted["layer2_0_downsample_1"]
    assert np.allclose(mean, state[key + "layer2.0.downsample.1.running_mean"]) and len(converted["bn1"]) == 4
    assert not any("other_head" in k or "num_batches" in k for k in converted)


def test_conversion_refuses_a_conv_with_bias_and_a_checkpoint_without_the_stem():
    state = fake_state()
    state["visual_encoder.model.encode_image.i3_resnet.layer1.0.conv1.bias"] = np.zeros(4)
    with pytest.raises(ConversionError, match="layer1.0.conv1"):
        convert_state_dict(state)
    no_stem = {k: v for k, v in fake_state().items() if not k.split("i3_resnet.")[-1].startswith(("conv1.", "bn1."))}
    with pytest.raises(ConversionError, match="stem"):
        convert_state_dict(no_stem)


def test_deflate_kernel_layout_for_a_2d_kernel():
    w = np.arange(2 * 3 * 5 * 5, dtype="float32").reshape(2, 3, 5, 5)  # (out, in, h, w)
    k = deflate_kernel(w)
    assert k.shape == (5, 5, 3, 2) and k[1, 4, 2, 0] == w[0, 2, 1, 4]


def test_orientation_layers_equal_numpy_transpose_and_both_flips():
    import keras

    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, orientation_layers(inputs, 6))
    set_orientation_weights(model)
    a = np.random.default_rng(1).uniform(0, 1, (2, 6, 6)).astype("float32")
    got = np.asarray(model.predict(a[..., None], verbose=0))[..., 0]
    assert np.array_equal(got, np.stack([x.T[::-1, ::-1] for x in a]))
    assert not any(layer.trainable_weights for layer in model.layers)


def test_converted_weights_fill_the_keras_graph_and_survive_the_npz(tmp_path):
    converted = convert_state_dict(fake_state())
    save_weights(tmp_path / "w.npz", converted)
    loaded = load_weights(tmp_path / "w.npz")
    assert sorted(loaded) == sorted(converted)
    model = feature_extractor(32, ["layer3", "layer4"], **TINY)
    assert assign_weights(model, loaded) == 2 + 4 * (3 * 2 + 2)        # stem + per layer 3 conv/bn pairs + shortcut
    assert np.allclose(model.get_layer("layer2_0_conv2").get_weights()[0], converted["layer2_0_conv2"][0])
    images = np.random.default_rng(2).integers(0, 255, (3, 32, 32, 1)).astype("float32")
    features = np.asarray(model.predict(images, verbose=0))
    assert features.shape == (3, 4 * 4 * 4 + 8 * 4 * 4) and np.all(np.isfinite(features))  # layer3 16*4, layer4 32*4
    wrong = dict(loaded, conv1=[np.zeros((3, 3, 1, 4), "float32")])
    with pytest.raises(ConversionError, match="conv1"):
        assign_weights(model, wrong)
    with pytest.raises(ConversionError, match="lack"):
        assign_weights(model, {k: v for k, v in loaded.items() if k != "layer4_0_conv3"})


def test_stride_2_convs_pad_symmetrically_as_pytorch_does():
    """A 1-pixel impulse at (0, 0) and its mirror at (S-1, S-1) reach conv1's output identically mirrored."""
    import keras

    model = feature_extractor(16, ["layer1"], **TINY)
    stem = keras.Model(model.input, model.get_layer("conv1").output)
    kernel = np.ones((7, 7, 1, 4), "float32")
    model.get_layer("conv1").set_weights([kernel])
    image = np.zeros((1, 16, 16, 1), "float32")
    image[0, 5, 5, 0] = 255.0
    out = np.asarray(stem.predict(image, verbose=0))[0, ..., 0]
    # symmetric padding 3, stride 2: oriented pixel (10, 10) -> outputs rows/cols 4..6 (centres 8, 10, 12)
    assert out.shape == (8, 8) and set(zip(*np.nonzero(out))) == {(r, c) for r in (4, 5, 6) for c in (4, 5, 6)}


def test_head_picks_c_on_validation_and_folds_the_standardisation():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 3, (3, 5))
    y = rng.integers(0, 3, 300)
    f = centres[y] * 10 + rng.normal(0, 1, (300, 5)) + 50                # far from zero mean, unit-ish noise
    head = fit_head(f[:200], y[:200], f[200:], y[200:], n_classes=4, cs=[0.001, 1.0])
    assert set(head.val_macro_f1) == {0.001, 1.0} and head.c == max(head.val_macro_f1, key=head.val_macro_f1.get)
    p = head_probabilities(head, f[200:])
    assert p.shape == (100, 4) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert (p.argmax(axis=1) == y[200:]).mean() > 0.9 and p[:, 3].max() < 1e-6   # class 3 absent: never predicted


def test_head_on_two_classes_gives_a_two_row_softmax():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 100)
    f = y[:, None] * 4.0 + rng.normal(0, 1, (100, 3))
    head = fit_head(f, y, f[:0], y[:0], n_classes=2, cs=[1.0])
    assert head.val_macro_f1 == {} and (head_probabilities(head, f).argmax(axis=1) == y).mean() > 0.9
    assert list(head.train_macro_f1) == [1.0] and head.train_macro_f1[1.0] > 0.9


def test_layer_columns_and_batched_extraction():
    assert list(layer_columns(["layer3", "layer4"], ["layer4"])[[0, -1]]) == [1024, 3071]
    assert len(layer_columns(["layer3", "layer4"], ["layer4", "layer3"])) == 3072
    with pytest.raises(ValueError, match="layer2"):
        layer_columns(["layer3"], ["layer2"])
    images = np.arange(5 * 2 * 2).reshape(5, 2, 2, 1).astype("uint8")
    calls = []
    out = extract(lambda b: calls.append(len(b)) or b.reshape(len(b), -1)[:, :1], images, 2)
    assert calls == [2, 2, 1] and out[:, 0].tolist() == [0, 4, 8, 12, 16]


def test_candidate_params_for_the_backbone():
    c = CandidateParams(architecture="ct_resnet152", weights="converted", trainable="last_blocks_3")
    assert c.backbone_layers == ["layer3"] and c.head_c
    for bad in (dict(width=0.5), dict(weights="imagenet"), dict(trainable="some"), dict(head_c=[]),
                dict(backbone_layers=["layer5"]), dict(backbone_layers=["layer3", "layer3"])):
        with pytest.raises(ValidationError):
            CandidateParams(architecture="ct_resnet152", **bad)
    assert BackboneParams().enabled is False and BackboneParams().layers == ["layer3", "layer4"]
