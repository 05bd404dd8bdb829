"""BentoML service: a kidney CT slice (PNG, JPEG or DICOM) in, class probabilities or a Grad-CAM out.

Serve a packaged Bento:   bentoml serve kidney_ct_classifier:latest
or the source tree:       bentoml serve serving.service:KidneyCtClassifier
Routes: POST /predict, /explain, /preview; GET /ui/ (the page for readers); BentoML adds /healthz,
/livez, /readyz (ready once the model is loaded) and /metrics (Prometheus). Settings: serving/config.py.
"""

from __future__ import annotations

import asyncio
import os
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import BadInput, BentoMLException, NotFound
from PIL import Image
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import FileResponse, RedirectResponse
from starlette.routing import Route

from components.common.imaging import ImageDecodeError, decode_image, prepare_for_model
from serving.auth import BearerTokenAuth
from serving.batching import MicroBatcher
from serving.config import load_config
from serving.inputs import RejectedUpload, check_size

MODEL_ENV = "KIDNEY_CT_BENTO_MODEL"  # explicit BentoML model tag, e.g. kidney_ct_classifier:abc123
CHAMPION_ALIAS = "champion"  # alias the package stage pins in the Bento it builds
DEFAULT_MODEL = "kidney_ct_classifier:latest"
PAGE = Path(__file__).with_name("static") / "index.html"

page = Starlette(routes=[Route("/", lambda request: FileResponse(PAGE, media_type="text/html"))])


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


def refused(exc: RejectedUpload) -> BentoMLException:
    return BentoMLException(str(exc), error_code=exc.status)


@bentoml.asgi_app(page, path="/ui")
@bentoml.service(workers=1, traffic={"timeout": 30})
class KidneyCtClassifier:
    """Loads the packaged Keras model once; preprocesses exactly as training did."""

    def __init__(self) -> None:
        import keras

        self.config = load_config()
        stored = resolve_bento_model()
        meta = stored.info.metadata
        self.classes = [str(c) for c in meta["classes"]]
        self.size = int(meta["image_size"])
        self.window = (float(meta["window_center"]), float(meta["window_width"]))
        self.model_version = str(meta.get("mlflow_version", stored.tag.version))
        self.served = {"mlflow_model": str(meta.get("mlflow_model", "")), "mlflow_version": self.model_version,
                       "bento_model": str(stored.tag)}
        self.model = keras.saving.load_model(stored.path_of(meta.get("model_file", "model.keras")), compile=False)
        self.batcher = MicroBatcher(self.run_model, self.config.max_batch_size, self.config.max_latency_ms)

    def run_model(self, batch: np.ndarray) -> np.ndarray:
        """(N, size, size) uint8 pixels -> (N, classes) probabilities."""
        return np.asarray(self.model(batch[..., np.newaxis].astype(np.float32), training=False))

    def prepare(self, image: Path) -> np.ndarray:
        """Upload -> checked, decoded, windowed (size, size) uint8 pixels, or a 4xx for the sender."""
        data = image.read_bytes()
        try:
            check_size(data, self.config.max_upload_bytes, self.config.max_pixels)
            loaded = decode_image(data)
        except RejectedUpload as exc:
            raise refused(exc) from None
        except ImageDecodeError as exc:
            raise BadInput(f"cannot classify the upload: {exc}. Send one PNG, JPEG or DICOM CT slice.") from None
        return prepare_for_model(loaded, self.size, *self.window)

    async def checked_pixels(self, image: Path) -> np.ndarray:
        return await asyncio.to_thread(self.prepare, image)

    @bentoml.api
    async def version(self) -> dict[str, str]:
        """Which model this instance serves: the registry name and version, and the BentoML model tag."""
        return self.served

    @bentoml.api
    async def predict(self, image: Path) -> Prediction:
        """Classify one uploaded slice (multipart field `image`); concurrent calls share model batches."""
        pixels = await self.checked_pixels(image)
        if self.config.batching:
            probs = await self.batcher.submit(pixels)
        else:
            probs = (await asyncio.to_thread(self.run_model, pixels[np.newaxis]))[0]
        probs = np.asarray(probs, dtype=float)
        return Prediction(label=self.classes[int(probs.argmax())],
                          probabilities={name: float(p) for name, p in zip(self.classes, probs)},
                          model_version=self.model_version)

    @bentoml.api
    async def explain(self, image: Path) -> Image.Image:
        """Grad-CAM overlay (PNG) for the predicted class, on the slice as the model sees it."""
        from components.common.gradcam import gradcam, overlay

        pixels = await self.checked_pixels(image)
        heat = await asyncio.to_thread(gradcam, self.model, pixels[np.newaxis, ..., np.newaxis].astype(np.float32))
        return Image.fromarray(overlay(pixels, heat[0]), mode="RGB")

    @bentoml.api
    async def preview(self, image: Path) -> Image.Image:
        """The slice as the model sees it (windowed, resized) as a grayscale PNG; shows DICOM in a browser."""
        return Image.fromarray(await self.checked_pixels(image), mode="L")


KidneyCtClassifier.add_asgi_middleware(BearerTokenAuth)  # no-op unless KIDNEY_CT_API_TOKEN is set
