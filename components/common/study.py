"""A study (scan series) as served and batch-scored: which slices belong together, and its verdict.

Shared by `components.predict` (batch scoring of an export) and the service's /predict_series, so both
group and judge a series exactly as evaluate does (components.common.pooling).
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from dataclasses import dataclass, field

import numpy as np

from components.common.conformal import ranked_members
from components.common.imaging import looks_like_dicom
from components.common.pooling import top_slices
from components.common.study_model import StudyModel


def dicom_series_uid(data: bytes) -> str | None:
    """SeriesInstanceUID from a DICOM header (None for rasters or a header without one)."""
    if not looks_like_dicom(data):
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # an unreadable header: the decoder reports why when the pixels are read
        return None
    uid = str(getattr(ds, "SeriesInstanceUID", "") or "").strip()
    return uid or None


def series_key(name: str, data: bytes) -> str:
    """The series a slice belongs to: its DICOM SeriesInstanceUID, else the folder it lies in."""
    return dicom_series_uid(data) or (posixpath.dirname(name.replace("\\", "/")) or ".")


class ArchiveError(ValueError):
    """A zip upload that cannot be opened or is too large; the message says why."""


def zip_members(data: bytes, max_files: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a zip archive (folders, hidden and macOS resource files skipped), bounded in count and size."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"not a readable zip archive ({exc})") from None
    infos = [i for i in archive.infolist() if not i.is_dir() and not posixpath.basename(i.filename).startswith(".")
             and not i.filename.startswith("__MACOSX/")]
    if len(infos) > max_files:
        raise ArchiveError(f"the archive holds {len(infos)} files; at most {max_files} slices per series")
    if sum(i.file_size for i in infos) > max_bytes:
        raise ArchiveError(f"the archive unpacks to more than {max_bytes / 1e6:.0f} MB")
    try:
        return [(i.filename, archive.read(i)) for i in infos]
    except (zipfile.BadZipFile, NotImplementedError, OSError) as exc:
        raise ArchiveError(f"a file in the archive cannot be extracted ({exc})") from None


@dataclass(frozen=True)
class StudyVerdict:
    """The verdict of one series, its conformal set and the slices that drove it."""

    label: str
    probabilities: dict[str, float]
    pooling: str
    slices: int
    top: list[int]  # indices of the slices with the highest verdict-class probability, highest first
    prediction_set: list[str] = field(default_factory=list)  # most probable first; [label] without conformal sets
    coverage: float | None = None  # the set's target coverage (None: no conformal calibration)

    @property
    def refer(self) -> bool:
        """More than one class in the set: not sure, refer to a radiologist."""
        return len(self.prediction_set) > 1

    @property
    def set_label(self) -> str:
        return "|".join(self.prediction_set or [self.label])


def study_verdict(probabilities: np.ndarray, classes: list[str], pooling: str, top_k: int,
                  study: StudyModel | None = None) -> StudyVerdict:
    """One series' (slices, classes) probabilities -> its verdict: pooled as `pooling` says, or through the
    champion's study model (series head, decision rule, conformal set) where it has one."""
    model = study or StudyModel(pooling)
    pooled = model.series_probabilities(probabilities)
    verdict = int(pooled.argmax())
    members = model.prediction_set(pooled)
    ranked = ranked_members(members, pooled, classes)
    return StudyVerdict(classes[verdict], {c: float(p) for c, p in zip(classes, pooled)}, model.pooling,
                        len(probabilities), top_slices(probabilities, verdict, top_k), ranked,
                        model.conformal.coverage if model.conformal is not None else None)
