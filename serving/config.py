"""Service settings from environment variables (set them in the deployment; defaults suit one CPU host)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from components.common.pooling import POOLINGS
from components.common.study_model import LEARNED, StudyModel

PREFIX = "KIDNEY_CT_"


@dataclass(frozen=True)
class ServeConfig:
    batching: bool = True          # KIDNEY_CT_BATCHING: group concurrent requests into one model call
    max_batch_size: int = 32       # KIDNEY_CT_MAX_BATCH_SIZE
    max_latency_ms: float = 5.0    # KIDNEY_CT_MAX_LATENCY_MS: longest a request waits for company
    max_upload_mb: float = 20.0    # KIDNEY_CT_MAX_UPLOAD_MB: bigger uploads get 413
    max_pixels: int = 4096 * 4096  # KIDNEY_CT_MAX_PIXELS: bigger images get 413
    max_series_files: int = 1000   # KIDNEY_CT_MAX_SERIES_FILES: slices per /predict_series call (more gets 413)
    token_env: str = "KIDNEY_CT_API_TOKEN"  # when this variable is set, /predict and /explain need the token
    clinical_use: bool = False     # KIDNEY_CT_CLINICAL_USE: the SR of /predict_series?sr=true drops its INVESTIGATIONAL
    #                                marking (as predict.clinical_use does for the CLI); only where cleared for it
    request_timeout_s: float = 120.0  # KIDNEY_CT_REQUEST_TIMEOUT_S: BentoML's request timeout; a study whose
    #                                   measured cost exceeds it is refused up front (413), never half-computed

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def load_config(env: dict[str, str] | None = None) -> ServeConfig:
    """ServeConfig with every KIDNEY_CT_<FIELD> variable applied; a bad value is a clear error."""
    env = dict(os.environ if env is None else env)
    default, values = ServeConfig(), {}
    for name, kind in (("batching", _flag), ("clinical_use", _flag), ("max_batch_size", int), ("max_latency_ms", float),
                       ("max_upload_mb", float), ("max_pixels", int), ("max_series_files", int),
                       ("request_timeout_s", float)):
        raw = env.get(PREFIX + name.upper())
        if raw is not None:
            try:
                values[name] = kind(raw)
            except ValueError:
                raise ValueError(f"{PREFIX + name.upper()}={raw!r} is not a valid {kind.__name__}") from None
    config = ServeConfig(**{**default.__dict__, **values})
    if config.max_batch_size < 1 or config.max_latency_ms < 0 or config.max_pixels < 1 or config.max_upload_mb <= 0 \
            or config.max_series_files < 1 or config.request_timeout_s <= 0:
        raise ValueError(f"invalid serving settings: {config}")
    return config


def certified_pooling(metadata: dict, env: dict[str, str] | None = None) -> str:
    """The study verdict's pooling the packaged model was certified with (its metadata; older Bentos: mean).

    KIDNEY_CT_SERIES_POOLING may not override it: set to another pooling it stops the service with a reason
    (re-register with evaluate.series_pooling changed, which re-certifies the model, instead).
    """
    env = dict(os.environ if env is None else env)
    pooling = str(metadata.get("series_pooling", "mean"))
    if pooling not in (*POOLINGS, LEARNED):
        raise ValueError(f"the packaged model names series pooling {pooling!r}, not one of {', '.join(POOLINGS)}, "
                         f"{LEARNED}")
    asked = env.get(PREFIX + "SERIES_POOLING")
    if asked is not None and asked != pooling:
        raise ValueError(f"{PREFIX}SERIES_POOLING={asked!r}, but the model was certified with {pooling!r} study "
                         "verdicts: unset it (the pooling is part of the model's contract)")
    return pooling


def packaged_study_model(metadata: dict) -> StudyModel | None:
    """The study model packaged with the model (series head, decision rule, conformal sets); None for older Bentos."""
    data = metadata.get("study_model")
    if not data:
        return None
    try:
        return StudyModel.from_dict(data if isinstance(data, dict) else json.loads(data))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"the packaged model's study model cannot be read ({exc}): re-run the package stage") from None


def request_timeout_s(env: dict[str, str] | None = None) -> float:
    """BentoML's request timeout, read where the service is declared (the decorator needs it)."""
    return load_config(env).request_timeout_s


def study_cost_s(slices: int, top_k: int, seconds_per_slice: float, seconds_per_gradcam: float) -> float:
    """What a study costs this service: every slice scored, the top-k slices' Grad-CAM."""
    return slices * seconds_per_slice + min(top_k, slices) * seconds_per_gradcam


def study_refusal(slices: int, top_k: int, seconds_per_slice: float, seconds_per_gradcam: float,
                  timeout_s: float, margin: float = 0.8) -> str | None:
    """Why a study cannot be answered within the request timeout (its cost past `margin` of it), else None."""
    cost = study_cost_s(slices, top_k, seconds_per_slice, seconds_per_gradcam)
    if cost <= margin * timeout_s:
        return None
    fits = max(0, int((margin * timeout_s - min(top_k, slices) * seconds_per_gradcam) / seconds_per_slice))
    return (f"a study of {slices} slices needs about {cost:.0f} s on this service ({seconds_per_slice * 1000:.0f} ms "
            f"a slice, {seconds_per_gradcam:.1f} s a Grad-CAM), more than its request timeout of {timeout_s:.0f} s "
            f"allows: send at most {fits} slices, raise KIDNEY_CT_REQUEST_TIMEOUT_S, or score the study with "
            "`python -m components.predict`")
