"""Pure core of the package stage: which registry version to serve, and what to record about it.

Everything here works on plain in-memory objects (fakes in tests); the CLI adapter does the IO.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from components.common.champion import (  # noqa: F401  (re-exported: the package stage's contract)
    CHAMPION_ALIAS,
    REQUIRED_TAGS,
    AliasLookup,
    Champion,
    VersionLike,
    champion_from_version,
    resolve_champion,
)
from components.common.cli import StageError

MODEL_FILE = "model.keras"  # file name of the Keras model inside the BentoML model


def check_registration(record: Mapping[str, Any], champion: Champion) -> None:
    """Refuse when register says the candidate failed the gate, or names another champion."""
    if "gate_passed" not in record:
        raise StageError("registration.json has no 'gate_passed' field: re-run the register stage")
    if record["gate_passed"] is not True:
        raise StageError(
            "the latest candidate did not pass the evaluation gate (registration.json gate_passed=false); "
            "nothing new to package"
        )
    recorded = record.get("champion_version")
    if recorded is None:
        raise StageError("registration.json has no 'champion_version': re-run the register stage")
    if str(recorded) != champion.version:
        raise StageError(
            f"registration.json names champion version {recorded}, but the registry's '{CHAMPION_ALIAS}' "
            f"alias points at version {champion.version}; re-run the register stage"
        )


def check_model_shapes(input_shape: tuple, output_shape: tuple, champion: Champion) -> None:
    """The Keras model must take (N, size, size, 1) and emit one probability per class."""
    size = champion.image_size
    if tuple(input_shape[1:]) != (size, size, 1):
        raise StageError(f"{champion.model_uri} expects input {tuple(input_shape[1:])}, "
                         f"but its tags promise ({size}, {size}, 1)")
    if output_shape[-1] != len(champion.classes):
        raise StageError(f"{champion.model_uri} outputs {output_shape[-1]} scores for "
                         f"{len(champion.classes)} classes {list(champion.classes)}")


def bento_model_labels(champion: Champion, runtime: str = "tensorflow", precision: str = "f32") -> dict[str, str]:
    """Labels that identify which registry version a BentoML model was packaged from, and with which contract: a
    version whose tags changed (e.g. a recalibrated study model) is packaged again, never served stale."""
    import hashlib

    contract = json.dumps(bento_model_metadata(champion, runtime, precision), sort_keys=True)
    return {"mlflow_model": champion.model_name, "mlflow_version": champion.version,
            "mlflow_run_id": champion.run_id, "contract": hashlib.sha256(contract.encode()).hexdigest()[:16]}


def bento_model_metadata(champion: Champion, runtime: str = "tensorflow", precision: str = "f32") -> dict[str, Any]:
    """What the service reads back at start-up: the preprocessing contract, the runtime (and the converted form's
    precision: an f32 package is not reused where int8 is asked) and provenance."""
    return {"model_file": MODEL_FILE, "runtime": runtime, **({"precision": precision} if runtime == "openvino" else {}),
            "classes": list(champion.classes), "image_size": champion.image_size,
            "window_center": champion.window_center, "window_width": champion.window_width,
            "series_pooling": champion.series_pooling, "body_crop": champion.body_crop,
            "study_model": json.dumps(champion.study.to_dict()) if champion.study else "",  # BentoML: no None
            "mlflow_model": champion.model_name, "mlflow_version": champion.version,
            "mlflow_run_id": champion.run_id}


def find_packaged(stored: Iterable[tuple[str, Mapping[str, str]]], name: str, champion: Champion,
                  runtime: str = "tensorflow", precision: str = "f32") -> str | None:
    """Tag of an existing BentoML model named `name` packaged from this same registry version for this runtime."""
    wanted = bento_model_labels(champion, runtime, precision)
    for tag, labels in stored:
        if tag.split(":", 1)[0] == name and all(labels.get(k) == v for k, v in wanted.items()):
            return tag
    return None


def pin_packages(names: Iterable[str], constraints: str) -> list[str]:
    """Pin each bare package name to its version in a pip constraints file (unknown names stay bare)."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {}
    for line in constraints.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[norm(match.group(1))] = match.group(2)
    pinned = []
    for name in names:
        bare = re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name) is not None
        pinned.append(f"{name}=={pins[norm(name)]}" if bare and norm(name) in pins else name)
    return pinned


def bento_record(champion: Champion, bento_tag: str, model_tag: str, reused: bool, created: str) -> dict[str, Any]:
    """The bento.json the stage writes for DVC and for whoever deploys the Bento."""
    return {"bento_tag": bento_tag, "bento_model_tag": model_tag, "bento_model_reused": reused,
            "mlflow_model_name": champion.model_name, "mlflow_model_version": champion.version,
            "mlflow_run_id": champion.run_id, "classes": list(champion.classes),
            "image_size": champion.image_size, "window_center": champion.window_center,
            "window_width": champion.window_width, "created": created}


def study_probabilities(study) -> Callable:
    """(probabilities, series) -> {series: its verdict's class probabilities} through the champion's study model."""
    def pooled_by_series(probabilities, series: list[str]) -> dict[str, np.ndarray]:
        order, pooled, _ = study.by_series(probabilities, series)
        return dict(zip(order, pooled))

    return pooled_by_series
