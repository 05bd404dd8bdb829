"""The registry's champion as every stage reads it: its version, run and serving contract (tags).

Pure: the alias lookup is passed in (components.common.registry.mlflow_alias_lookup on a real registry,
a dict in tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from components.common.cli import StageError
from components.common.pooling import POOLINGS
from components.common.study_model import LEARNED, StudyModel

CHAMPION_ALIAS = "champion"
REQUIRED_TAGS = ("classes", "image_size", "window_center", "window_width")
STUDY_MODEL_TAG = "study_model"  # JSON of components.common.study_model.StudyModel (versions before it: none)


class VersionLike(Protocol):
    """The fields of an MLflow ModelVersion this stage reads."""

    version: str
    run_id: str | None
    tags: dict[str, str]


# (model name, alias) -> the version carrying that alias, or None when there is none.
AliasLookup = Callable[[str, str], "VersionLike | None"]


@dataclass(frozen=True)
class Champion:
    """The registry version that gets served, with the preprocessing it was trained for."""

    model_name: str
    version: str
    run_id: str
    classes: tuple[str, ...]
    image_size: int
    window_center: float
    window_width: float
    series_pooling: str = "mean"  # the study verdict evaluate certified (tag series_pooling; older versions: mean)
    body_crop: bool = False  # slices cropped to the body before the model (tag body_crop; older versions: false)
    study: StudyModel | None = None  # series head, decision rule, conformal sets (tag study_model)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"


def resolve_champion(lookup: AliasLookup, model_name: str) -> Champion:
    """THE one place that turns `models:/<name>@champion` into a Champion, or refuses."""
    found = lookup(model_name, CHAMPION_ALIAS)
    if found is None:
        raise StageError(
            f"no version of registered model '{model_name}' carries the alias '{CHAMPION_ALIAS}': "
            "run the register stage (a candidate must pass the gate) before packaging"
        )
    return champion_from_version(model_name, found)


def champion_from_version(model_name: str, found: VersionLike) -> Champion:
    """Read the serving contract (classes, size, HU window) from a version's tags."""
    tags = dict(found.tags or {})
    where = f"'{model_name}' version {found.version}"
    missing = [key for key in REQUIRED_TAGS if key not in tags]
    if missing:
        raise StageError(f"{where} lacks the tag(s) {', '.join(missing)}; re-run the register stage")
    try:
        classes = json.loads(tags["classes"])
        image_size = int(tags["image_size"])
        center, width = float(tags["window_center"]), float(tags["window_width"])
    except (ValueError, TypeError) as exc:
        raise StageError(f"{where} has an unreadable serving tag ({exc})") from None
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise StageError(f"{where}: tag 'classes' must be a JSON list of at least two labels, got {tags['classes']!r}")
    if image_size < 1 or width <= 0:
        raise StageError(f"{where}: image_size and window_width must be positive")
    pooling = tags.get("series_pooling", "mean")
    if pooling not in (*POOLINGS, LEARNED):
        raise StageError(f"{where}: tag 'series_pooling' is {pooling!r}, not one of {', '.join(POOLINGS)}, {LEARNED}")
    try:
        study = StudyModel.from_dict(json.loads(tags[STUDY_MODEL_TAG])) if STUDY_MODEL_TAG in tags else None
    except (ValueError, TypeError, KeyError) as exc:
        raise StageError(f"{where}: tag '{STUDY_MODEL_TAG}' cannot be read ({exc}); re-run the register stage") from None
    return Champion(model_name, str(found.version), found.run_id or "", tuple(classes), image_size, center, width,
                    pooling, tags.get("body_crop", "false") == "true", study)
