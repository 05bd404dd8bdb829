"""Candidate architectures (Keras 3, backend-agnostic: no tf.* calls)."""

from __future__ import annotations

from components.common.params import CandidateParams


def input_front(image_size: int, augmentation: list, mean: float, variance: float):
    """Shared model front: uint8-range input -> [0, 1] -> augmentation (training only) -> standardised."""
    import keras

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(inputs)
    for layer in augmentation:
        x = layer(x)
    x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(x)
    return inputs, x


def paper_cnn_body(x, candidate: CandidateParams):
    """The paper's CNN: conv/ReLU/max-pool blocks, a dense layer, dropout."""
    import keras

    for i, filters in enumerate(candidate.filters):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(candidate.dense_units, activation="relu", name="dense")(x)
    return keras.layers.Dropout(candidate.dropout, name="dropout")(x)


BODIES = {"paper_cnn": paper_cnn_body}


def build_model(name: str, candidate: CandidateParams, image_size: int, n_classes: int, augmentation: list,
                mean: float, variance: float):
    """A compiled-ready functional model for one candidate, softmax over `n_classes`."""
    import keras

    inputs, x = input_front(image_size, augmentation, mean, variance)
    x = BODIES[candidate.architecture](x, candidate)
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
