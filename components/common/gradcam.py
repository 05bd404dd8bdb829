"""Grad-CAM for Keras 3 classifiers, shared by the service, the explain CLI and reports.

The model is split at the explained conv layer into `body` (input -> activations A) and `head`
(A -> class scores); the gradient of the class score with respect to A is taken with the active
backend (tf.GradientTape for TensorFlow, jax.grad for JAX). The split is checked numerically against
the whole model, so a model it cannot split faithfully is refused instead of explained wrongly. The check is a
second forward pass of the whole model; it is made on a model's first call for a layer and remembered for that
model object (a ResNet-152 study in the service: ~2 s of its Grad-CAM's ~4 s on 2 cores).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

Forward = Callable[[object], object]
_FAITHFUL_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> layer names checked


class GradCamError(ValueError):
    """The model cannot be explained with Grad-CAM; the message says why."""


def _is_conv(layer) -> bool:
    import keras

    return isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def _own_layers(model) -> list:
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _last_conv_path(model) -> list[str]:
    """Names from the outer model down to its last conv layer (nested models searched too)."""
    import keras

    for layer in reversed(_own_layers(model)):
        if _is_conv(layer):
            return [layer.name]
        if isinstance(layer, keras.Model):
            inner = _last_conv_path(layer)
            if inner:
                return [layer.name, *inner]
    return []


def find_last_conv_layer(model) -> str:
    """Name of the last 2-D conv layer, looking inside nested models (e.g. a backbone)."""
    path = _last_conv_path(model)
    if not path:
        raise GradCamError(f"model {model.name!r} has no 2-D convolution layer to explain")
    return path[-1]


def _contains(model, name: str) -> bool:
    import keras

    return any(layer.name == name or (isinstance(layer, keras.Model) and _contains(layer, name))
               for layer in _own_layers(model))


def _chain(layers: list) -> Forward:
    def forward(x):
        for layer in layers:
            x = layer(x, training=False)
        return x
    return forward


def _functional_head(model, layer, after: list) -> Forward:
    """The graph from `layer`'s output to the model's output (branches and merges kept), else a plain chain."""
    import keras

    try:
        suffix = keras.Model(layer.output, model.output)
    except (ValueError, TypeError):  # the output also needs tensors from before the layer: try a chain
        return _chain(after)
    return lambda a: suffix(a, training=False)


def _descends_from(tensor, source, seen: dict) -> bool:
    """Whether symbolic `tensor` is computed from symbolic `source` (walks the functional graph backwards)."""
    if tensor is source:
        return True
    key = id(tensor)
    if key not in seen:
        seen[key] = False  # a cycle cannot occur; this also stops re-walking shared ancestors
        history = getattr(tensor, "_keras_history", None)
        operation = history[0] if history else None
        inputs = getattr(operation, "input", None) if operation is not None and operation.__class__.__name__ != \
            "InputLayer" else None
        parents = inputs if isinstance(inputs, (list, tuple)) else [inputs] if inputs is not None else []
        seen[key] = any(_descends_from(parent, source, seen) for parent in parents)
    return seen[key]


def _side_inputs(after: list, activations) -> list:
    """Inputs of the Concatenate layers after the explained layer that do not come from it (a shallower layer's
    pooled features beside the explained layer's): the head needs them besides the activations. Only features
    joined side by side count; a residual Add past the layer still makes the split refuse."""
    import keras

    seen: dict = {}
    side = []
    for layer in after:
        if isinstance(layer, keras.layers.Concatenate):
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            side += [t for t in inputs if not _descends_from(t, activations, seen)]
    return side


def _split_with_side_inputs(model, layer, side: list) -> tuple[Forward, Forward]:
    """body(x) = activations, keeping the side tensors of the same images; head(A) = output from A and those."""
    import keras

    prefix = keras.Model(model.input, [layer.output, *side])
    suffix = keras.Model([layer.output, *side], model.output)
    held: dict = {}

    def body(x):
        activations, *held["side"] = prefix(x, training=False)
        return activations

    def head(a):  # one tensor type for every input (Keras refuses a numpy array beside backend tensors)
        return suffix([keras.ops.convert_to_tensor(a), *held["side"]], training=False)

    return body, head


def _split(model, name: str) -> tuple[Forward, Forward]:
    """(body, head): body(x) = activations of layer `name`, head(A) = model output."""
    import keras

    layers = _own_layers(model)
    for k, layer in enumerate(layers):
        if layer.name == name:
            if isinstance(model, keras.Sequential):  # a chain by definition (and may have no symbolic input)
                return _chain(layers[:k + 1]), _chain(layers[k + 1:])
            side = _side_inputs(layers[k + 1:], layer.output)
            if side:  # the output also reads tensors that do not pass through the layer: held fixed per batch
                return _split_with_side_inputs(model, layer, side)
            prefix = keras.Model(model.input, layer.output)
            return (lambda x: prefix(x, training=False)), _functional_head(model, layer, layers[k + 1:])
        if isinstance(layer, keras.Model) and _contains(layer, name):
            inner_body, inner_head = _split(layer, name)
            before, after = _chain(layers[:k]), _chain(layers[k + 1:])
            return (lambda x: inner_body(before(x))), (lambda a: after(inner_head(a)))
    raise GradCamError(f"model {model.name!r} has no layer named {name!r}")


def _gradients(head: Forward, activations, class_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d score / d A, class scores) with the active Keras backend."""
    import keras

    backend = keras.backend.backend()
    rows = np.arange(len(class_index))
    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.convert_to_tensor(activations)
        with tf.GradientTape() as tape:
            tape.watch(a)
            scores = head(a)
            picked = tf.gather_nd(scores, np.stack([rows, class_index], axis=1))
        return np.asarray(tape.gradient(picked, a)), np.asarray(scores)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(a):
            scores = head(a)
            return jnp.sum(scores[rows, class_index]), scores

        grads, scores = jax.grad(total, has_aux=True)(jnp.asarray(activations))
        return np.asarray(grads), np.asarray(scores)
    raise GradCamError(f"Grad-CAM supports the tensorflow and jax Keras backends, not {backend!r}")


def _resize(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(m.astype(np.float32), mode="F")
                                .resize((width, height), Image.Resampling.BILINEAR)) for m in maps])


def _normalise(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0).clip(0.0, 1.0).astype(np.float32)


def gradcam(model, images: np.ndarray, class_index: int | None = None, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] for images (N, H, W, 1); class None = each image's top class."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise GradCamError(f"expected images of shape (N, H, W, C), got {images.shape}")
    name = layer_name or find_last_conv_layer(model)
    body, head = _split(model, name)
    activations = np.asarray(body(images))
    if name not in _FAITHFUL_SPLITS.get(model, ()):
        _check_split(model, name, head, activations, images)
        _FAITHFUL_SPLITS.setdefault(model, set()).add(name)
    chosen = (np.asarray(head(activations)).argmax(axis=1) if class_index is None
              else np.full(len(images), int(class_index)))
    grads, _ = _gradients(head, activations, chosen)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cams = np.maximum((weights * activations).sum(axis=-1), 0.0)
    return _normalise(_onto_image(model, cams, images.shape[1], images.shape[2]))


def _check_split(model, name: str, head: Forward, activations: np.ndarray, images: np.ndarray) -> None:
    """Refuse a split whose head(activations) is not the whole model's output on the same images."""
    whole = np.asarray(model(images, training=False))
    try:
        faithful = np.allclose(np.asarray(head(activations)), whole, atol=1e-4)
    except (ValueError, TypeError):  # a merge layer fed one tensor: the head branches
        faithful = False
    if not faithful:
        raise GradCamError(f"cannot split {model.name!r} at {name!r}: the layers after it are not a plain chain; "
                           "pass layer_name of a conv layer after which the model is sequential")


def _onto_image(model, cams: np.ndarray, height: int, width: int) -> np.ndarray:
    """Heatmaps resized to the image, or into the region a front `roi_crop` (Cropping2D) kept, zero elsewhere."""
    import keras

    crop = next((layer for layer in _own_layers(model) if isinstance(layer, keras.layers.Cropping2D)), None)
    if crop is None:
        return _resize(cams, height, width)
    (top, bottom), (left, right) = crop.cropping
    placed = np.zeros((len(cams), height, width), np.float32)
    placed[:, top:height - bottom, left:width - right] = _resize(cams, height - top - bottom, width - left - right)
    return placed


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heatmap (jet colours) over a uint8 gray image; returns RGB uint8 (H, W, 3)."""
    from matplotlib import colormaps

    if gray.shape != heatmap.shape:
        raise GradCamError(f"image {gray.shape} and heatmap {heatmap.shape} differ in shape")
    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    base = np.repeat(gray.astype(np.float32)[..., None], 3, axis=2)
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]  # cold regions keep the scan readable
    return np.clip(base * (1 - weight) + colours * weight, 0, 255).round().astype(np.uint8)


def outside_body_share(heatmaps: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Per image, the share of its Grad-CAM energy outside the patient's body (components.common.imaging.body_mask
    of the uint8 slice): near 0 when the model looks at anatomy, high when it reads the surround, table or text."""
    from components.common.imaging import body_mask

    heat = np.asarray(heatmaps, dtype=np.float64)
    shares = []
    for h, image in zip(heat, np.asarray(images)):
        mask = body_mask(np.asarray(image, dtype=np.float32).reshape(h.shape) / 255.0)
        total = h.sum()
        shares.append(float(h[~mask].sum() / total) if total > 0 else 0.0)
    return np.array(shares)
