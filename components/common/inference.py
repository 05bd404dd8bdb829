"""Scoring prepared slices on a CPU: one way for every stage that does it (the service, predict, the monitor).

The champion's Keras model is converted once, at package time, to OpenVINO's IR (`convert`): on the same two cores
it scores ~3.5x the slices a second that TensorFlow does (BENCHMARKS.md, "A CT study in seconds"). The converted
model has two outputs, the class probabilities and the penultimate layer (the monitor's embedding), so one pass
gives both. `check_conversion` compares the converted form with the Keras one on validation slices and series;
the package stage refuses a conversion outside the tolerance, with the figures. Grad-CAM stays on the Keras graph:
it needs gradients.

`load_scorer(champion)` is what predict and the monitor call: the version's converted form when package logged one
to its run (`runtime/openvino/`), else its Keras model; the service reads the one carried in its Bento.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.common.runtime import openvino_model

RUNTIME_DIR = "openvino"          # the converted model's folder, in a Bento model and under a run's runtime/
IR_FILE = "model.xml"             # OpenVINO IR (with model.bin beside it)
RUN_ARTIFACT = f"runtime/{RUNTIME_DIR}"
BATCH = 32


def two_output_model(model):
    """The Keras model with a second output, its last layer's input (the penultimate layer: the embedding)."""
    import keras

    return keras.Model(model.inputs, [model.outputs[0], model.layers[-1].input])


class KerasScorer:
    """TensorFlow's compiled call of the Keras model (`predict_on_batch`, ~3x an eager call on a ResNet)."""

    runtime = "tensorflow"

    def __init__(self, model):
        self.model = two_output_model(model)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, embedding = self.model.predict_on_batch(batch)
        return np.asarray(probabilities), np.asarray(embedding).reshape(len(batch), -1)


PRECISIONS = ("f32", "bf16", "int8")  # bf16: ~2x on CPUs with AVX-512 BF16 / AMX (elsewhere OpenVINO computes in
#   f32); int8: the IR quantised by NNCF (`quantize`), its remaining layers in f32
SETTINGS_FILE = "runtime.json"  # beside the IR: the precision it was checked at, and the check's figures


class OpenVinoScorer:
    """The converted model compiled for this CPU (latency hint: every core on one batch), at the precision it was
    checked at (f32 unless package.runtime_precision said otherwise)."""

    runtime = "openvino"

    def __init__(self, ir_file: str | Path, precision: str | None = None):
        import openvino as ov

        if precision is None:
            precision = checked_precision(Path(ir_file).with_name(SETTINGS_FILE))
        core = ov.Core()
        self.precision, self.lock = precision, threading.Lock()  # one infer request: one batch at a time
        self.compiled = core.compile_model(core.read_model(str(ir_file)), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32" if precision == "int8" else precision})

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            outputs = self.compiled(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(outputs[0]), np.asarray(outputs[1]).reshape(len(batch), -1)


Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def convert(model, folder: str | Path) -> Path:
    """The Keras model (both outputs) as OpenVINO IR in `folder`, full precision; the IR file's path."""
    import openvino as ov

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(openvino_model(two_output_model(model)), str(folder / IR_FILE), compress_to_fp16=False)
    return folder / IR_FILE


def quantize(ir_file: str | Path, calibration: np.ndarray, subset: int = 300) -> Path:
    """Static int8 post-training quantisation of the IR (NNCF), its activation ranges calibrated on `calibration`
    prepared uint8 slices (N, size, size), at most `subset` of them evenly spaced; it takes the place of `ir_file`
    (the same file names), whose path it returns.

    The convolutions run in int8; every MatMul stays f32: the head reads pooled features of several layers side by
    side, whose ranges differ by orders of magnitude, so one int8 scale for its input moved a real slice's
    probability by 0.93 (0.20 with it in f32), and the orientation flips are exact permutations. Activations are
    quantised asymmetrically (NNCF's mixed preset): a ReLU map has no negative half to spend levels on.
    """
    import nncf
    import openvino as ov

    if not len(calibration):
        raise ValueError("int8 quantisation needs calibration slices (the training slices); none were given")
    picks = np.linspace(0, len(calibration) - 1, min(subset, len(calibration))).astype(int)
    items = [calibration[i][np.newaxis, ..., np.newaxis].astype(np.float32) for i in picks]
    model = ov.Core().read_model(str(ir_file))
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), preset=nncf.QuantizationPreset.MIXED,
                              ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False))
    ir_file = Path(ir_file)
    staged = ir_file.with_name(f"int8-{ir_file.name}")
    ov.save_model(quantized, str(staged), compress_to_fp16=False)  # beside, then renamed: the f32 .bin is mapped
    for suffix in (".bin", ".xml"):
        staged.with_suffix(suffix).replace(ir_file.with_suffix(suffix))
    return ir_file


def score(scorer: Scorer, pixels: np.ndarray, batch: int = BATCH, on_batch: Callable[[int], None] | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, embeddings) of prepared uint8 slices (N, size, size), `batch` at a time."""
    probabilities, embeddings = [], []
    for start in range(0, len(pixels), batch):
        x = pixels[start:start + batch, ..., np.newaxis].astype(np.float32)
        p, e = scorer(x)
        probabilities.append(p)
        embeddings.append(e)
        if on_batch is not None:
            on_batch(len(x))
    if not probabilities:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(probabilities).astype(np.float64), np.concatenate(embeddings)


@dataclass(frozen=True)
class ConversionCheck:
    """The converted model against the Keras one on the same slices: the figures package decides on."""

    slices: int
    series: int
    max_probability_diff: float
    slice_agreement: float       # share of slices with the same predicted class
    series_agreement: float      # share of series with the same study verdict
    max_allowed_diff: float
    min_slice_agreement: float
    max_study_probability_diff: float = 0.0  # of the study verdict's probabilities, over the series
    max_allowed_study_diff: float = 1.0

    @property
    def passed(self) -> bool:
        return (self.max_probability_diff <= self.max_allowed_diff and self.slice_agreement >= self.min_slice_agreement
                and self.series_agreement == 1.0 and self.max_study_probability_diff <= self.max_allowed_study_diff)

    def summary(self) -> str:
        return (f"on {self.slices} validation slices of {self.series} series: max probability difference "
                f"{self.max_probability_diff:.2g} on a slice (allowed {self.max_allowed_diff:g}) and "
                f"{self.max_study_probability_diff:.2g} on a study (allowed {self.max_allowed_study_diff:g}), same "
                f"slice verdict on {self.slice_agreement:.1%} (at least {self.min_slice_agreement:.0%}), same study "
                f"verdict on {self.series_agreement:.1%} of series (all required)")


def check_conversion(keras_probabilities: np.ndarray, converted_probabilities: np.ndarray, series: Sequence[str],
                     study_probabilities: Callable[[np.ndarray, list[str]], dict[str, np.ndarray]], max_diff: float,
                     min_slice_agreement: float, max_study_diff: float = 1.0) -> ConversionCheck:
    """Compare two models' probabilities on the same slices; `study_probabilities(probabilities, series)` gives each
    series' verdict probabilities (the champion's study model, as the service and predict pool)."""
    if keras_probabilities.shape != converted_probabilities.shape or not len(keras_probabilities):
        raise ValueError(f"cannot compare probabilities of shapes {keras_probabilities.shape} and "
                         f"{converted_probabilities.shape}")
    series = list(series)
    reference = study_probabilities(keras_probabilities, series)
    converted = study_probabilities(converted_probabilities, series)
    same_series = np.mean([reference[name].argmax() == converted[name].argmax() for name in reference])
    study_diff = max(float(np.abs(reference[name] - converted[name]).max()) for name in reference)
    return ConversionCheck(
        slices=len(series), series=len(reference),
        max_probability_diff=float(np.abs(keras_probabilities - converted_probabilities).max()),
        slice_agreement=float(np.mean(keras_probabilities.argmax(1) == converted_probabilities.argmax(1))),
        series_agreement=float(same_series), max_allowed_diff=max_diff, min_slice_agreement=min_slice_agreement,
        max_study_probability_diff=study_diff, max_allowed_study_diff=max_study_diff)


def load_scorer(model_uri: str, run_id: str) -> Scorer:
    """A registered version's scorer: its converted form where package logged one to its run, else its Keras model."""
    import mlflow

    from components.common.registry import load_registered_keras

    with tempfile.TemporaryDirectory(prefix="kidney-ct-runtime-") as tmp:
        try:
            folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RUN_ARTIFACT, dst_path=tmp)
            return OpenVinoScorer(Path(folder) / IR_FILE)  # compiled: the files may go
        except Exception:  # noqa: BLE001 - no converted form (or no OpenVINO here): the Keras model scores
            return KerasScorer(load_registered_keras(model_uri))


def checked_precision(settings: Path) -> str:
    """The precision package checked a converted form at, from the settings file beside its IR (f32 without one)."""
    import json

    return json.loads(settings.read_text()).get("precision", "f32") if settings.is_file() else "f32"


def scorer_form(run_id: str) -> str:
    """What `load_scorer` scores a version with, from its run's settings file alone: `openvino-<precision>`, or
    `tensorflow` where package logged no converted form (what a cached description of its outputs must match)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="kidney-ct-runtime-") as tmp:
        try:
            settings = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{RUN_ARTIFACT}/{SETTINGS_FILE}",
                                                           dst_path=tmp)
        except Exception:  # noqa: BLE001 - no converted form: the Keras model scores
            return KerasScorer.runtime
        return f"openvino-{checked_precision(Path(settings))}"
