"""BentoML service: a kidney CT slice (PNG, JPEG or DICOM) in, class probabilities out.

Serve a packaged Bento:   bentoml serve kidney_ct_classifier:latest
or the source tree:       bentoml serve serving.service:KidneyCtClassifier
BentoML adds /healthz, /livez, /readyz and /metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import BadInput, NotFound
from pydantic import BaseModel

from components.common.imaging import ImageDecodeError, decode_image, prepare_for_model

MODEL_ENV = "KIDNEY_CT_BENTO_MODEL"  # explicit BentoML model tag, e.g. kidney_ct_classifier:abc123
CHAMPION_ALIAS = "champion"  # alias the package stage pins in the Bento it builds
DEFAULT_MODEL = "kidney_ct_classifier:latest"


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    model_version: str


def resolve_bento_model() -> bentoml.Model:
    """$KIDNEY_CT_BENTO_MODEL, else the model pinned in this Bento, else the newest packaged one."""
    if os.environ.get(MODEL_ENV):
        return bentoml.models.get(os.environ[MODEL_ENV])
    try:
        return bentoml.models.get(CHAMPION_ALIAS)
    except NotFound:
        return bentoml.models.get(DEFAULT_MODEL)


@bentoml.service(workers=1, traffic={"timeout": 30})
class KidneyCtClassifier:
    """Loads the packaged Keras model once; preprocesses exactly as training did."""

    def __init__(self) -> None:
        import keras

        stored = resolve_bento_model()
        meta = stored.info.metadata
        self.classes = [str(c) for c in meta["classes"]]
        self.size = int(meta["image_size"])
        self.window = (float(meta["window_center"]), float(meta["window_width"]))
        self.model_version = str(meta.get("mlflow_version", stored.tag.version))
        self.model = keras.saving.load_model(stored.path_of(meta.get("model_file", "model.keras")), compile=False)

    @bentoml.api
    def predict(self, image: Path) -> Prediction:
        """Classify one uploaded slice (multipart field `image`)."""
        try:
            loaded = decode_image(image.read_bytes())
        except ImageDecodeError as exc:
            raise BadInput(f"cannot classify the upload: {exc}. Send one PNG, JPEG or DICOM CT slice.") from None
        pixels = prepare_for_model(loaded, self.size, *self.window).astype(np.float32)
        batch = pixels[np.newaxis, ..., np.newaxis]  # (1, size, size, 1), as in training
        probs = np.asarray(self.model(batch, training=False))[0].astype(float)
        return Prediction(
            label=self.classes[int(probs.argmax())],
            probabilities={name: float(p) for name, p in zip(self.classes, probs)},
            model_version=self.model_version,
        )
