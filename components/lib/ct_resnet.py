"""The CT-pretrained ResNet-152 deflated to 2-D, as built-in Keras 3 layers: the network, its converted weights
(the backbone stage writes them: components.backbone.core), and the fronts the features, train and leakage
stages build on it.

PyTorch pads symmetrically; Keras' "same" pads a stride-2 conv asymmetrically, so stride-2 convs get an explicit
ZeroPadding2D and "valid". The model's grey input sums conv1 over its three (equal) channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.common.params import LAYER_BLOCKS

DEPTHS = tuple(LAYER_BLOCKS.values())       # bottleneck blocks of layer1..layer4 (ResNet-152)
LAYERS = tuple(LAYER_BLOCKS)
STEM_WIDTH = 64
BN_EPSILON = 1e-5                           # PyTorch's BatchNorm default
WEIGHTS_FILE = "ct_resnet152.npz"           # the converted weights inside paths.backbone


class ConversionError(ValueError):
    """The checkpoint does not hold the expected network; the message says what is missing or extra."""


def layer_names(upto: str) -> list[str]:
    """`layer1` .. `upto` in order."""
    if upto not in LAYERS:
        raise ValueError(f"unknown backbone layer {upto!r}; have {list(LAYERS)}")
    return list(LAYERS[:LAYERS.index(upto) + 1])


def cut_depths(layers: list[str], blocks: int | None, depths: tuple[int, ...] = DEPTHS) -> tuple[int, ...]:
    """`depths` with the deepest of `layers` cut after `blocks` bottleneck blocks (None: whole)."""
    if blocks is None:
        return tuple(depths)
    deepest = max(LAYERS.index(layer) for layer in layers)
    if not 1 <= blocks <= depths[deepest]:
        raise ValueError(f"{LAYERS[deepest]} has {depths[deepest]} blocks; cannot read it after {blocks}")
    return tuple(blocks if i == deepest else d for i, d in enumerate(depths))


def _conv(x, filters: int, kernel: int, stride: int, name: str):
    import keras

    if stride > 1 and kernel > 1:  # symmetric padding as PyTorch does, then a valid convolution
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)(x)


def _bn(x, name: str):
    import keras

    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=name)(x)


def bottleneck(x, planes: int, stride: int, downsample: bool, name: str):
    """torchvision Bottleneck v1.5: 1x1 -> 3x3 (stride) -> 1x1 (x4), projection shortcut on the first block."""
    import keras

    shortcut = x
    if downsample:
        shortcut = _bn(_conv(x, planes * 4, 1, stride, f"{name}_downsample_0"), f"{name}_downsample_1")
    h = keras.layers.ReLU(name=f"{name}_relu1")(_bn(_conv(x, planes, 1, 1, f"{name}_conv1"), f"{name}_bn1"))
    h = keras.layers.ReLU(name=f"{name}_relu2")(_bn(_conv(h, planes, 3, stride, f"{name}_conv2"), f"{name}_bn2"))
    h = _bn(_conv(h, planes * 4, 1, 1, f"{name}_conv3"), f"{name}_bn3")
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([h, shortcut]))


def resnet_layers(x, upto: str = "layer4", depths: tuple[int, ...] = DEPTHS, width: int = STEM_WIDTH) -> dict:
    """The stem and layer1..`upto` applied to a grey (N, H, W, 1) tensor; {layer name: its output}."""
    import keras

    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = keras.layers.Conv2D(width, 7, strides=2, padding="valid", use_bias=False, name="conv1")(x)
    x = keras.layers.ReLU(name="relu")(_bn(x, "bn1"))
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # after ReLU, zero padding = PyTorch's -inf padding
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    outputs = {}
    for i, layer in enumerate(layer_names(upto)):
        planes, stride = width * 2 ** i, 1 if i == 0 else 2
        for block in range(depths[i]):
            x = bottleneck(x, planes, stride if block == 0 else 1, block == 0, f"{layer}_{block}")
        outputs[layer] = x
    return outputs


def orientation_layers(x, size: int):
    """An (N, S, S, 1) slice as the 3-D model saw axial planes, numpy's `a.T[::-1, ::-1]`, from built-in layers.

    Each flip is a non-trainable Dense with an anti-identity kernel on one axis (exact: one 1.0 per column),
    the transpose a Permute; `set_orientation_weights` fills the kernels once the model is built.
    """
    import keras

    x = keras.layers.Reshape((size, size), name="orient_squeeze")(x)
    x = keras.layers.Dense(size, use_bias=False, trainable=False, name="orient_flip_cols")(x)
    x = keras.layers.Permute((2, 1), name="orient_transpose")(x)
    x = keras.layers.Dense(size, use_bias=False, trainable=False, name="orient_flip_rows")(x)
    return keras.layers.Reshape((size, size, 1), name="orient_expand")(x)


def set_orientation_weights(model) -> None:
    """Anti-identity kernels into both orientation Dense layers of `model`."""
    for name in ("orient_flip_cols", "orient_flip_rows"):
        layer = model.get_layer(name)
        size = layer.kernel.shape[0]
        layer.set_weights([np.eye(size, dtype="float32")[::-1].copy()])


def backbone_layer_names(model) -> list[str]:
    """Names of `model`'s layers that carry converted backbone weights (convs and BatchNorms)."""
    import keras

    return [layer.name for layer in model.layers if isinstance(layer, (keras.layers.Conv2D,
            keras.layers.BatchNormalization)) and (layer.name in ("conv1", "bn1") or layer.name.startswith("layer"))]


def assign_weights(model, weights: dict[str, list[np.ndarray]]) -> int:
    """Set every backbone layer of `model` from `weights`; raise ConversionError if one is missing or misshaped."""
    names = backbone_layer_names(model)
    missing = [n for n in names if n not in weights]
    if missing:
        raise ConversionError(f"the converted weights lack {len(missing)} layer(s) of the model, e.g. {missing[:3]}")
    for name in names:
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [tuple(w.shape) for w in weights[name]]:
            raise ConversionError(f"{name}: converted shapes {[w.shape for w in weights[name]]} != model {expected}")
        layer.set_weights(weights[name])
    return len(names)


def save_weights(path: Path, weights: dict[str, list[np.ndarray]]) -> None:
    """One .npz: entry `<layer>.<i>` per weight array (float32)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"{name}.{i}": w for name, ws in weights.items() for i, w in enumerate(ws)})


def load_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """The mapping `save_weights` wrote."""
    out: dict[str, list[np.ndarray]] = {}
    with np.load(path) as archive:
        for key in sorted(archive.files, key=lambda k: (k.rsplit(".", 1)[0], int(k.rsplit(".", 1)[1]))):
            out.setdefault(key.rsplit(".", 1)[0], []).append(archive[key])
    return out


def feature_extractor(image_size: int, blocks: list, size: int | None = None, depths=DEPTHS,
                      width: int = STEM_WIDTH):
    """uint8-range (S, S, 1) slices -> the concatenated pooled `blocks` ((layer, pooling), or a layer name for its
    mean), as the candidate's front sees them."""
    import keras

    inputs = keras.Input((image_size, image_size, 1), name="image")
    pooled = front_and_backbone(inputs, blocks, size or image_size, depths, width)
    model = keras.Model(inputs, pooled, name="ct_resnet152_features")
    set_orientation_weights(model)
    return model


def explained_map(x, layer: str):
    """An identity 1x1 depthwise conv (weights 1, frozen) on a layer's output: the conv Grad-CAM explains.

    A residual block ends in Add + ReLU, so no conv of the backbone is followed by a plain chain to the output;
    this exact identity is (only pooling and the head follow it), and it needs no custom layer.
    """
    import keras

    return keras.layers.DepthwiseConv2D(1, use_bias=False, depthwise_initializer="ones", trainable=False,
                                        name=f"cam_{layer}")(x)


POOLING_LAYERS = {"mean": ("GlobalAveragePooling2D", "{}_pool"), "max": ("GlobalMaxPooling2D", "{}_maxpool")}


def front_and_backbone(unit_or_raw, blocks: list, size: int, depths=DEPTHS, width: int = STEM_WIDTH,
                       rescale: bool = True):
    """[to 0-1 ->] [resize ->] orient -> ResNet up to the deepest layer of `blocks` -> pooled blocks concatenated.

    A block is (layer, pooling) with pooling mean or max over the map's positions, or a layer name (its mean).
    Each layer's map passes one `cam_<layer>` identity first; Grad-CAM explains the deepest one, the other
    layers' features held as they are.
    """
    import keras

    blocks = [(b, "mean") if isinstance(b, str) else tuple(b) for b in blocks]
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(unit_or_raw) if rescale else unit_or_raw
    if x.shape[1] != size:
        x = keras.layers.Resizing(size, size, name="resize")(x)
    x = orientation_layers(x, size)
    layers = list(dict.fromkeys(layer for layer, _ in blocks))
    outputs = resnet_layers(x, max(layers, key=LAYERS.index), depths, width)
    maps = {layer: explained_map(outputs[layer], layer) for layer in sorted(layers, key=LAYERS.index)}
    pooled = []
    for layer, pooling in blocks:
        kind, name = POOLING_LAYERS[pooling]
        pooled.append(getattr(keras.layers, kind)(name=name.format(layer))(maps[layer]))
    return pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="features")(pooled)
