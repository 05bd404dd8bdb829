"""Candidate architectures (Keras 3, backend-agnostic: no tf.* calls, only built-in layers).

Every model shares one front (uint8-range grayscale -> [0, 1] -> augmentation -> standardised), so a
saved model needs no custom objects to load in the register, package and serving code.
"""

from __future__ import annotations

import math
from pathlib import Path

from components.common.params import CandidateParams

# The pixel range each keras.applications model expects (its own `preprocess_input`), as (scale, offset) on [0, 1].
IMAGENET_CAFFE_MEANS = [103.939, 116.779, 123.68]  # ResNet50: 0-255, BGR channel means subtracted
APPLICATION_RANGE = {
    "efficientnet_b0": (255.0, 0.0),    # 0-255; the model rescales and normalises inside
    "mobilenet_v2": (2.0, -1.0),        # [-1, 1]
    "inception_v3": (2.0, -1.0),        # [-1, 1]
    "resnet50": (255.0, [-m for m in IMAGENET_CAFFE_MEANS]),
}
MIN_SIZE = {"efficientnet_b0": 32, "mobilenet_v2": 32, "resnet50": 32, "inception_v3": 75}


class SetupError(ValueError):
    """A candidate cannot be set up as configured; the message says what to change."""


class WeightsError(SetupError):
    """The `weights` setting names a file that is not there (nothing is downloaded implicitly)."""


ROI_LAYER = "roi_crop"  # the Cropping2D that keeps a candidate's region of interest (Grad-CAM maps back through it)


def roi_cropping(image_size: int, roi: list[float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Cropping2D's ((top, bottom), (left, right)) pixel cuts for `roi` = [top, bottom, left, right] fractions kept."""
    top, bottom, left, right = (round(f * image_size) for f in roi)
    if bottom - top < 8 or right - left < 8:
        raise SetupError(f"roi {roi} keeps less than 8 px of a {image_size} px image: widen it")
    return (top, image_size - bottom), (left, image_size - right)


def input_front(image_size: int, augmentation: list, mean: float, variance: float,
                intensity_channels: list[float] = (), roi: list[float] = ()):
    """Shared model front: uint8-range input -> [0, 1] -> augmentation (training only) -> [roi] -> standardised.

    Each threshold t of `intensity_channels` adds a channel that keeps only pixels brighter than t, stretched
    to [0, 1]: a second "window" on the densest structures (stones, bone) next to the standardised grey one.
    A `roi` crops the (augmented) slice to a fixed region inside the model, so the whole slice is what is
    stored, served and explained, and the body only computes on the region.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(inputs)
    for layer in augmentation:
        x = layer(x)
    if roi:
        x = keras.layers.Cropping2D(roi_cropping(image_size, roi), name=ROI_LAYER)(x)
    grey = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(x)
    if not intensity_channels:
        return inputs, grey
    windows = [grey]
    for i, threshold in enumerate(intensity_channels):
        scale = 1.0 / (1.0 - threshold)
        stretched = keras.layers.Rescaling(scale, -threshold * scale, name=f"dense_window{i}")(x)
        windows.append(keras.layers.ReLU(max_value=1.0, name=f"dense_window{i}_clip")(stretched))
    return inputs, keras.layers.Concatenate(axis=-1, name="input_windows")(windows)


def resolve_weights(weights: str) -> str | None:
    """`none` -> None, `imagenet` -> Keras' own download, else an existing local file path."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    if not Path(weights).is_file():
        raise WeightsError(f"weights file {weights} not found: pre-place the notop .h5 file there "
                           "(see docs/training.md, 'Pretrained weights') or set weights: none")
    return str(Path(weights).resolve())


def gray_to_application_input(x, architecture: str, mean: float, variance: float):
    """Standardised grayscale -> 3 identical channels in the pixel range the application expects."""
    import keras

    std = math.sqrt(variance)
    scale, offset = APPLICATION_RANGE[architecture]
    # x * std + mean restores [0, 1]; fold that and the application's range into one Rescaling.
    offsets = [o + scale * mean for o in offset] if isinstance(offset, list) else offset + scale * mean
    x = keras.layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    return keras.layers.Rescaling(scale * std, offsets, name=f"{architecture}_range")(x)


def application_body(x, candidate: CandidateParams, mean: float, variance: float):
    """A keras.applications backbone (no top, average-pooled) on grayscale adapted to 3 channels."""
    import keras

    arch = candidate.architecture
    x = gray_to_application_input(x, arch, mean, variance)
    shape = tuple(x.shape[1:])
    common = dict(include_top=False, weights=resolve_weights(candidate.weights), input_shape=shape, pooling="avg")
    builders = {
        "efficientnet_b0": lambda: keras.applications.EfficientNetB0(**common),
        "mobilenet_v2": lambda: keras.applications.MobileNetV2(alpha=candidate.width, **common),
        "resnet50": lambda: keras.applications.ResNet50(**common),
        "inception_v3": lambda: keras.applications.InceptionV3(**common),
    }
    x = builders[arch]()(x)
    x = keras.layers.Dropout(candidate.dropout, name="dropout")(x)
    return x


def paper_cnn_body(x, candidate: CandidateParams, mean: float = 0.0, variance: float = 1.0):
    """The paper's CNN: conv/ReLU/max-pool blocks, a dense layer, dropout."""
    import keras

    for i, filters in enumerate(candidate.filters):
        x = keras.layers.Conv2D(max(1, round(filters * candidate.width)), 3, padding="same", activation="relu",
                                name=f"conv{i + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(candidate.dense_units, activation="relu", name="dense")(x)
    return keras.layers.Dropout(candidate.dropout, name="dropout")(x)


def compact_cnn_body(x, candidate: CandidateParams, mean: float = 0.0, variance: float = 1.0):
    """A compact CNN that generalises across scans: BatchNorm conv pairs, then global average + max pooling.

    Global pooling replaces the paper's flatten-dense (which memorises where things sit in a scan), and the
    max pool keeps a small bright finding (a stone) visible however little of the slice it covers.
    """
    import keras

    def conv(h, filters: int, name: str, strides: int = 1):
        h = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(h)
        h = keras.layers.BatchNormalization(momentum=candidate.batchnorm_momentum, name=f"{name}_bn")(h)
        return keras.layers.ReLU(name=f"{name}_relu")(h)

    widths = [max(1, round(f * candidate.width)) for f in candidate.filters]
    x = conv(x, widths[0], "stem", strides=2)
    for i, filters in enumerate(widths):
        x = conv(x, filters, f"conv{i + 1}a")
        x = conv(x, filters, f"conv{i + 1}b")
        if i < len(widths) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    if candidate.global_pooling == "max":  # presence of a finding anywhere: the slice's layout cannot be memorised
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    elif candidate.global_pooling == "softmax":
        x = softmax_pooling(x, candidate.pooling_temperature)
    else:
        pooled = [keras.layers.GlobalAveragePooling2D(name="avg_pool")(x),
                  keras.layers.GlobalMaxPooling2D(name="max_pool")(x)]
        x = keras.layers.Concatenate(name="pooled")(pooled)
    x = keras.layers.Dropout(candidate.dropout, name="dropout")(x)
    return keras.layers.Dense(candidate.dense_units, activation="relu", name="dense")(x)


def softmax_pooling(x, temperature: float):
    """Each channel pooled with weights softmax(scores) over the positions: a smooth maximum with a gradient at every
    position, where global max pooling sends it to one.

    The scores are a learned linear map of the channels started at `temperature` times the identity (each channel
    scores itself); built-in layers only, so the model saves, converts and explains like the others.
    """
    import keras

    height, width, channels = x.shape[1:]
    positions = height * width
    scores = keras.layers.Dense(channels, use_bias=False, name="pool_scores",
                                kernel_initializer=keras.initializers.Identity(gain=temperature))(x)
    weights = keras.layers.Softmax(axis=1, name="pool_weights")(
        keras.layers.Reshape((positions, channels), name="pool_score_positions")(scores))
    values = keras.layers.Reshape((positions, channels), name="pool_positions")(x)
    weighted = keras.layers.Multiply(name="pool_weighted")([weights, values])
    mean = keras.layers.GlobalAveragePooling1D(name="pool_mean")(weighted)
    return keras.layers.Rescaling(float(positions), name="softmax_pool")(mean)  # the weighted sum


def vit_body(x, candidate: CandidateParams, mean: float = 0.0, variance: float = 1.0):
    """A small Vision Transformer: patch embedding, convolutional position encoding, pre-norm blocks, GAP.

    Position information comes from a depthwise 3x3 convolution over the patch grid (CPVT, Chu et al. 2021)
    instead of a learned table, so the model is made of built-in layers only and accepts any image size.
    """
    import keras

    dim = max(candidate.vit_heads, round(candidate.vit_dim * candidate.width))
    side = x.shape[1] // candidate.patch_size
    if side < 2:
        raise SetupError(f"image {x.shape[1]} px is too small for {candidate.patch_size} px patches")
    x = keras.layers.Conv2D(dim, candidate.patch_size, strides=candidate.patch_size, name="patch_embed")(x)
    position = keras.layers.DepthwiseConv2D(3, padding="same", name="position_encoding")(x)
    x = keras.layers.Add(name="add_position")([x, position])
    x = keras.layers.Reshape((side * side, dim), name="tokens")(x)
    for i in range(candidate.vit_depth):
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x)
        h = keras.layers.MultiHeadAttention(candidate.vit_heads, dim // candidate.vit_heads, dropout=0.1,
                                            name=f"block{i}_attention")(h, h)
        x = keras.layers.Add(name=f"block{i}_residual1")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(x)
        h = keras.layers.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(h)
        h = keras.layers.Dense(dim, name=f"block{i}_mlp2")(h)
        x = keras.layers.Add(name=f"block{i}_residual2")([x, h])
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool_tokens")(x)
    return keras.layers.Dropout(candidate.dropout, name="dropout")(x)


BODIES = {"paper_cnn": paper_cnn_body, "compact_cnn": compact_cnn_body, "vit": vit_body,
          **{arch: application_body for arch in APPLICATION_RANGE}}


def backbone_weights(weights: str) -> dict | None:
    """ct_resnet152's `weights`: none = random, else the converted .npz (the CLI resolves `converted` to it)."""
    from components.lib.ct_resnet import load_weights

    if weights == "none":
        return None
    if not Path(weights).is_file():
        raise WeightsError(f"converted backbone {weights} not found: set backbone.enabled: true and run the "
                           "backbone stage (dvc repro backbone)")
    return load_weights(Path(weights))


def ct_resnet152_model(name: str, candidate: CandidateParams, image_size: int, n_classes: int, augmentation: list,
                       weights: dict | None = None):
    """The CT ResNet-152 candidate: 0-1 grey -> augmentation -> orientation -> backbone -> pooled layers -> softmax.

    The same layers as the features stage's extractor (components/lib/ct_resnet.py), so a head fitted on cached
    features gives this model's output (the deepest layer read after `deepest_layer_blocks` of its blocks, as the
    features stage cut it). `weights`: the converted backbone ({layer: arrays}); None = random.
    `trainable` freezes the backbone (frozen), or all but its last N bottleneck blocks (last_blocks_N).
    """
    import keras

    from components.lib.ct_resnet import assign_weights, cut_depths, front_and_backbone, set_orientation_weights

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(inputs)
    for layer in augmentation:
        x = layer(x)
    x = front_and_backbone(x, candidate.feature_blocks(), model_input_size(candidate, image_size),
                           cut_depths(candidate.backbone_layers, candidate.deepest_layer_blocks), rescale=False)
    x = keras.layers.Dropout(candidate.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name)
    set_orientation_weights(model)
    if weights is not None:
        assign_weights(model, weights)
    set_backbone_trainable(model, candidate.trainable)
    return model


def set_backbone_trainable(model, trainable: str) -> None:
    """frozen: no backbone layer trains; all: every one; last_blocks_N: the last N bottleneck blocks only."""
    from components.lib.ct_resnet import backbone_layer_names

    names = backbone_layer_names(model)
    block_of = lambda n: "_".join(n.split("_")[:2])  # noqa: E731  (layer3_35_downsample_0 -> layer3_35)
    blocks = sorted({block_of(n) for n in names if n.startswith("layer")},
                    key=lambda b: (b.split("_")[0], int(b.split("_")[1])))
    tuned = set(blocks[-int(trainable.rsplit("_", 1)[1]):]) if trainable.startswith("last_blocks_") else set()
    for name in names:
        model.get_layer(name).trainable = trainable == "all" or block_of(name) in tuned


def model_input_size(candidate: CandidateParams, image_size: int) -> int:
    """The side the body sees: the candidate's own size, else the arrays' size (raised to the body's minimum)."""
    return max(candidate.image_size or image_size, MIN_SIZE.get(candidate.architecture, 8))


def build_model(name: str, candidate: CandidateParams, image_size: int, n_classes: int, augmentation: list,
                mean: float, variance: float):
    """A compile-ready functional model for one candidate, softmax over `n_classes`."""
    import keras

    if candidate.architecture == "ct_resnet152":  # its own front: the backbone wants 0-1 grey, not standardised
        return ct_resnet152_model(name, candidate, image_size, n_classes, augmentation,
                                  backbone_weights(candidate.weights))

    inputs, x = input_front(image_size, augmentation, mean, variance, candidate.intensity_channels, candidate.roi)
    size = model_input_size(candidate, image_size)
    if size != image_size:
        x = keras.layers.Resizing(size, size, name="resize")(x)
    x = BODIES[candidate.architecture](x, candidate, mean, variance)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
