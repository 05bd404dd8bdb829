"""BentoML service: a kidney CT slice (PNG, JPEG or DICOM) in, class probabilities or a Grad-CAM out.

Serve a packaged Bento:   bentoml serve kidney_ct_classifier:latest
or the source tree:       bentoml serve serving.service:KidneyCtClassifier
Routes: POST /predict, /explain, /preview, /predict_series (a whole series: several files or a zip -> the study
verdict, the slices that drove it and their Grad-CAM; with sr=true also the verdict as a DICOM Structured Report
for the PACS, docs/structured-report.md); GET /ui/ (the page for readers); BentoML adds /healthz,
/livez, /readyz (ready once the model is loaded) and /metrics (Prometheus; the sizes of /predict's model
batches are the histogram kidney_ct_predict_batch_size). Settings: serving/config.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
import pydicom
from bentoml.exceptions import BadInput, BentoMLException, NotFound
from PIL import Image
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

from components.common.conformal import ranked_members
from components.common.imaging import ImageDecodeError, decode_image, looks_like_dicom, prepare_for_model
from components.common.study import ArchiveError, StudyVerdict, dicom_series_uid, study_verdict, zip_members
from serving.auth import BearerTokenAuth
from serving.batching import MicroBatcher, size_buckets
from serving.config import certified_pooling, load_config, packaged_study_model, request_timeout_s, study_refusal
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
    prediction_set: list[str] | None = None  # the slice's conformal set, most probable first (None: no calibration)
    refer: bool | None = None                # more than one class in it
    coverage: float | None = None            # its target coverage


class SliceEvidence(BaseModel):
    """One slice that drove a study verdict: its own scores, and PNGs (base64) of it and its Grad-CAM."""

    name: str
    index: int  # position among the scored slices (upload order, zips expanded, skipped files left out)
    label: str
    probabilities: dict[str, float]
    verdict_probability: float
    slice_png: str
    gradcam_png: str


class Skipped(BaseModel):
    name: str
    reason: str


class SeriesPrediction(BaseModel):
    """The study verdict: its probabilities, its conformal set (the classes that hold the truth with the certified
    coverage; more than one: refer to a radiologist), the top slices for it, and what was skipped."""

    label: str
    probabilities: dict[str, float]
    prediction_set: list[str]  # most probable first; the verdict alone when the model has no conformal calibration
    refer: bool                # more than one class in the set: not sure, refer to a radiologist
    coverage: float | None     # the set's certified target coverage (None: no conformal calibration)
    pooling: str
    slices: int
    series_uids: list[str]
    top_slices: list[SliceEvidence]
    skipped: list[Skipped]
    model_version: str
    structured_report: str | None = None  # sr=true: the DICOM SR (application/dicom), base64; it names the patient


def upload_name(path: Path) -> str:
    """The sender's file name: BentoML stores an upload as NamedTemporaryFile(suffix=<name>), i.e. tmpXXXXXXXX<name>."""
    return re.sub(r"^tmp[a-z0-9_]{8}(?=.)", "", path.name)


def png_base64(array: np.ndarray, mode: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def resolve_bento_model() -> bentoml.Model:
    """$KIDNEY_CT_BENTO_MODEL, else the model pinned in this Bento, else the newest packaged one."""
    if os.environ.get(MODEL_ENV):
        return bentoml.models.get(os.environ[MODEL_ENV])
    try:
        return bentoml.models.get(CHAMPION_ALIAS)
    except NotFound:
        return bentoml.models.get(DEFAULT_MODEL)


def packaged_scorer(stored: bentoml.Model, meta: dict, keras_model):
    """What scores slices: the OpenVINO form the package stage converted and checked (package.runtime: openvino),
    else the Keras model (a Bento packaged with runtime tensorflow, or before there was a converted form)."""
    from components.common.inference import IR_FILE, RUNTIME_DIR, KerasScorer, OpenVinoScorer

    ir_file = Path(stored.path_of(RUNTIME_DIR)) / IR_FILE
    if meta.get("runtime") == "openvino" and ir_file.is_file():
        return OpenVinoScorer(ir_file)
    return KerasScorer(keras_model)


def batch_size_histogram(max_batch_size: int):
    """The Prometheus histogram of /predict's batch sizes (buckets 1, 2, 4, ... up to max_batch_size)."""
    from prometheus_client import Histogram  # only now: BentoML sets up multiprocess metrics before __init__

    return Histogram("kidney_ct_predict_batch_size", "Uploads per model call of /predict (micro-batching)",
                     buckets=size_buckets(max_batch_size))


def sr_algorithm(meta: dict, version: str):
    """The model as the SR names it: its registry name and version, and its contract's parameters."""
    from components.lib.structured_report import Algorithm

    return Algorithm(str(meta.get("mlflow_model") or "kidney-ct-classifier"), version, {
        "classes": ",".join(str(c) for c in meta["classes"]), "image_size": str(meta["image_size"]),
        "window_center": f"{float(meta['window_center']):g}", "window_width": f"{float(meta['window_width']):g}"})


def refused(exc: RejectedUpload) -> BentoMLException:
    return BentoMLException(str(exc), error_code=exc.status)


@bentoml.asgi_app(page, path="/ui")
@bentoml.service(workers=1, traffic={"timeout": request_timeout_s()})
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
        self.series_pooling = certified_pooling(meta)
        self.study = packaged_study_model(meta)
        self.body_crop = bool(meta.get("body_crop", False))
        self.model_version = str(meta.get("mlflow_version", stored.tag.version))
        self.algorithm = sr_algorithm(meta, self.model_version)
        self.served = {"mlflow_model": str(meta.get("mlflow_model", "")), "mlflow_version": self.model_version,
                       "bento_model": str(stored.tag)}
        self.model = keras.saving.load_model(stored.path_of(meta.get("model_file", "model.keras")), compile=False)
        self.scorer = packaged_scorer(stored, meta, self.model)  # the converted form scores; Grad-CAM on Keras
        self.served["runtime"] = self.scorer.runtime
        if getattr(self.scorer, "precision", None):
            self.served["precision"] = self.scorer.precision  # the converted form's: f32, bf16 or int8
        self.batcher = MicroBatcher(self.run_model, self.config.max_batch_size, self.config.max_latency_ms,
                                    batch_size_histogram(self.config.max_batch_size).observe)
        self.seconds_per_slice, self.seconds_per_gradcam = self.measure_costs()

    def measure_costs(self) -> tuple[float, float]:
        """Seconds a slice takes to score (a warm batch) and a Grad-CAM takes, on this CPU: what sizes a study."""
        import time

        from components.common.gradcam import gradcam

        batch = np.zeros((min(8, self.config.max_batch_size), self.size, self.size), dtype=np.uint8)
        self.run_model(batch)  # the first call compiles
        started = time.perf_counter()
        self.run_model(batch)
        per_slice = (time.perf_counter() - started) / len(batch)
        started = time.perf_counter()
        gradcam(self.model, batch[:1, ..., np.newaxis].astype(np.float32), class_index=0)
        return per_slice, time.perf_counter() - started

    def run_model(self, batch: np.ndarray) -> np.ndarray:
        """(N, size, size) uint8 pixels -> (N, classes) probabilities, by the packaged runtime."""
        return self.scorer(batch[..., np.newaxis].astype(np.float32))[0]

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
        return prepare_for_model(loaded, self.size, *self.window, self.body_crop)

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
        members = self.study.slice_set(probs) if self.study is not None else None
        ranked = None if members is None else ranked_members(members, probs, self.classes)
        return Prediction(label=self.classes[int(probs.argmax())],
                          probabilities={name: float(p) for name, p in zip(self.classes, probs)},
                          model_version=self.model_version, prediction_set=ranked,
                          refer=None if ranked is None else len(ranked) > 1,
                          coverage=None if ranked is None else self.study.slice_conformal.coverage)

    def unpack(self, images: list[Path]) -> list[tuple[str, bytes]]:
        """(name, bytes) per uploaded slice, zips expanded; 413 past the series bounds, 400 for a broken zip."""
        files: list[tuple[str, bytes]] = []
        limit, total_bytes = self.config.max_series_files, self.config.max_upload_bytes * self.config.max_series_files
        for path in images:
            data = path.read_bytes()
            if data[:4] == b"PK\x03\x04":
                try:
                    files += zip_members(data, limit, total_bytes)
                except ArchiveError as exc:
                    raise BadInput(f"cannot open {upload_name(path)}: {exc}") from None
            else:
                files.append((upload_name(path), data))
            if len(files) > limit:
                raise BentoMLException(f"the series has more than {limit} files; this service accepts at most "
                                       f"{limit} slices per series", error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return files

    def prepare_series(self, images: list[Path], keep: bool = False) -> tuple[list[str], np.ndarray, list[Skipped],
                                                                           list[str], list[bytes]]:
        """Names and pixels of the readable slices (and their bytes if `keep`); each unreadable one skipped."""
        names, pixels, skipped, uids, kept = [], [], [], set(), []
        for name, data in self.unpack(images):
            try:
                check_size(data, self.config.max_upload_bytes, self.config.max_pixels)
                pixels.append(prepare_for_model(decode_image(data), self.size, *self.window, self.body_crop))
            except (RejectedUpload, ImageDecodeError) as exc:
                skipped.append(Skipped(name=name, reason=str(exc)))
                continue
            names.append(name)
            uids.add(dicom_series_uid(data) or "")
            kept += [data] if keep else []
        if not names:
            reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:5]) or "no file received"
            raise BadInput(f"no readable slice in the series ({reasons}). Send PNG, JPEG or DICOM slices, "
                           "or one zip of them, as the multipart field `images`.")
        return names, np.stack(pixels), skipped, sorted(u for u in uids if u), kept

    def structured_report(self, slices: list[bytes], verdict: StudyVerdict) -> str:
        """The verdict as a DICOM SR (base64), filed with the study the slices belong to; 400 if it cannot be."""
        from components.lib.structured_report import SeriesFinding, SrRefused, build_report, report_bytes

        headers = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in slices
                   if looks_like_dicom(data)]
        try:
            if len(headers) < len(slices):
                raise SrRefused(f"{len(slices) - len(headers)} of the {len(slices)} slices have no DICOM header: a "
                                "DICOM SR references the DICOM instances it read, so PNG/JPEG slices cannot get one")
            finding = SeriesFinding(verdict.label, verdict.probabilities, verdict.pooling, verdict.slices,
                                    [str(headers[i].SOPInstanceUID) for i in verdict.top],
                                    verdict.prediction_set if verdict.coverage is not None else [], verdict.coverage)
            report = build_report(headers, finding, self.algorithm, self.config.clinical_use)
        except SrRefused as exc:
            raise BadInput(f"sr=true: no structured report for this series: {exc}") from None
        return base64.b64encode(report_bytes(report)).decode("ascii")

    def series_verdict(self, images: list[Path], top_k: int, sr: bool = False) -> SeriesPrediction:
        """Score every slice, pool into the study verdict, Grad-CAM the top-k slices for it (and its SR if asked)."""
        from components.common.gradcam import gradcam, overlay

        names, pixels, skipped, uids, kept = self.prepare_series(images, keep=sr)
        refusal = study_refusal(len(pixels), top_k, self.seconds_per_slice, self.seconds_per_gradcam,
                                self.config.request_timeout_s)
        if refusal:  # answered now, not timed out later with the worker still computing for nobody
            raise BentoMLException(refusal, error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        step = self.config.max_batch_size
        probs = np.concatenate([self.run_model(pixels[i:i + step]) for i in range(0, len(pixels), step)]).astype(float)
        verdict = study_verdict(probs, self.classes, self.series_pooling, top_k, self.study)
        top, k = verdict.top, self.classes.index(verdict.label)
        heat = gradcam(self.model, pixels[top][..., np.newaxis].astype(np.float32), class_index=k)  # for the verdict
        evidence = [SliceEvidence(name=names[i], index=i, label=self.classes[int(probs[i].argmax())],
                                  probabilities={c: float(p) for c, p in zip(self.classes, probs[i])},
                                  verdict_probability=float(probs[i, k]), slice_png=png_base64(pixels[i], "L"),
                                  gradcam_png=png_base64(overlay(pixels[i], h), "RGB"))
                    for i, h in zip(top, heat)]
        return SeriesPrediction(label=verdict.label, probabilities=verdict.probabilities,
                                prediction_set=verdict.prediction_set, refer=verdict.refer, coverage=verdict.coverage,
                                pooling=verdict.pooling,
                                slices=verdict.slices, series_uids=uids, top_slices=evidence, skipped=skipped,
                                model_version=self.model_version,
                                structured_report=self.structured_report(kept, verdict) if sr else None)

    @bentoml.api
    async def predict_series(self, images: list[Path], top_k: int = 3, sr: bool = False) -> SeriesPrediction:
        """The study verdict for a whole series: slices as repeated multipart field `images`, or one zip; sr=true
        adds the verdict as a DICOM Structured Report (DICOM slices only)."""
        if not 1 <= top_k <= 16:
            raise BadInput("top_k must be between 1 and 16")
        return await asyncio.to_thread(self.series_verdict, images, top_k, sr)

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
