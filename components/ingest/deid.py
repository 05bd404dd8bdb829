"""De-identification after DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile with
the "Retain Longitudinal Temporal Information with Modified Dates" option (docs/deidentification.md).

The action of every attribute comes from the standard's Table E.1-1, committed as `ps3_15_e1_1.json`
(edition and source inside; `make_e1_1_table.py` regenerates it), at any nesting depth:
- X remove; Z empty; D dummy value; U salted UID remapping (consistent across files); a combined code
  (X/Z, X/D, X/Z/D) removes, Z/D gives a dummy, X/Z/U* keeps the sequence and treats its items;
- the project's rules on top: PatientID (D) becomes the salted patient key `p-<16 hex>` (the grouping
  key); every date (DA, DT) the table names, except the birth date, moves back by a per-patient salted
  number of days (the Modified Dates option: intervals between one patient's studies survive);
- what the table does not name: private tags, curves (50xx) and overlays (60xx) are removed, and of the
  other public attributes only the `KEEP` allowlist (what a CT classifier needs) stays, everything else
  is removed whatever its VR (a UID is remapped like U: it stays a reference, never a value);
- the file meta is rebuilt and the preamble zeroed; what was done is recorded in the dataset:
  PatientIdentityRemoved, DeidentificationMethod, DeidentificationMethodCodeSequence (exactly the
  options applied) and LongitudinalTemporalInformationModified.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import io
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary, generate_uid

TABLE_FILE = Path(__file__).with_name("ps3_15_e1_1.json")
UID_ROOT = "1.2.826.0.1.3680043.8.498."
DEIDENTIFICATION_METHOD = "PS3.15 E.1-1 Basic Profile; modified dates; kidney-ct ingest"  # LO: <= 64 chars
PROFILE_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
MIN_SHIFT_DAYS, SHIFT_SPAN_DAYS = 3650, 3650  # dates move 10 to 20 years back, per patient
PATIENT_ID = 0x00100020
NOT_SHIFTED = frozenset({0x00100030})  # PatientBirthDate: emptied (Z), not kept as a shifted date
# Public attributes the table does not name that stay: a CT classifier needs them, none holds free text
# about the patient (ConvolutionKernel, FilterType, BodyPartExamined are short scanner/technique codes;
# Manufacturer and ManufacturerModelName name the scanner, which the PS3.15 table does not list as PHI).
KEEP = frozenset(
    {
        # SOP common and image identification (the UIDs the table names are remapped)
        "SpecificCharacterSet", "SOPClassUID", "ImageType", "Modality", "SeriesNumber", "InstanceNumber",
        "AcquisitionNumber", "BurnedInAnnotation", "RecognizableVisualFeatures",
        # image pixel module
        "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
        "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelData",
        "PixelPaddingValue", "SmallestImagePixelValue", "LargestImagePixelValue", "LossyImageCompression",
        "LossyImageCompressionRatio", "LossyImageCompressionMethod",
        # geometry
        "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness",
        "SpacingBetweenSlices", "SliceLocation", "PatientPosition", "BodyPartExamined",
        # rescale and display window
        "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth",
        # CT acquisition and reconstruction parameters
        "KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "ExposureInuAs", "ConvolutionKernel",
        "Manufacturer", "ManufacturerModelName",  # the scanner, not the patient: the drift monitor compares it
        "ReconstructionDiameter", "DataCollectionDiameter", "GantryDetectorTilt", "TableHeight",
        "RotationDirection", "FilterType", "GeneratorPower", "FocalSpots", "SpiralPitchFactor", "CTDIvol",
        "SingleCollimationWidth", "TotalCollimationWidth", "TableSpeed", "TableFeedPerRotation",
        "RevolutionTime", "ExposureModulationType", "ScanOptions",
        # the de-identification record this module writes
        "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
    }
)  # fmt: skip
DUMMY = {"AE": "ANONYMOUS", "AS": "000D", "CS": "ANONYMIZED", "DS": "0", "IS": "0", "LO": "ANONYMIZED",
         "LT": "ANONYMIZED", "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "UC": "ANONYMIZED",
         "UT": "ANONYMIZED", "TM": "000000"}
STRING_VRS = frozenset(DUMMY) | {"DA", "DT", "UI", "UR"}
_PSEUDONYM = re.compile(r"p-[0-9a-f]{16}")


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 as committed: tag -> action code (the repeating groups 50xx, 60xx: see `_action`)."""

    edition: str
    source: str
    actions: dict[int, str]


@lru_cache(maxsize=1)
def profile_table(path: Path = TABLE_FILE) -> ProfileTable:
    """Read the committed table once."""
    raw = json.loads(Path(path).read_text())
    actions = {int(row["tag"], 16): row["action"] for row in raw["attributes"] if "xx" not in row["tag"]}
    return ProfileTable(raw["edition"], raw["source"], actions)


@dataclass(frozen=True)
class Deidentified:
    """A de-identified copy of a dataset plus the salted keys that group its images."""

    dataset: Dataset
    group: str  # p-<16 hex>: salted hash of the original PatientID (or of the study if none)
    series: str  # s-<16 hex>: salted hash of the original SeriesInstanceUID
    shift_days: int  # how many days this patient's dates moved back


def salted_hash(salt: str, kind: str, value: str, length: int = 16) -> str:
    """HMAC-SHA256 of `value` keyed by the salt, namespaced by `kind`; first `length` hex digits."""
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:length]


def replacement_uid(salt: str, original: str) -> str:
    """A valid DICOM UID derived deterministically from the salted hash of the original UID."""
    return generate_uid(UID_ROOT, [salted_hash(salt, "uid", original, length=64)])


def date_shift_days(salt: str, group: str) -> int:
    """Days to move this patient's dates back: salted, the same for every file of the patient."""
    return MIN_SHIFT_DAYS + int(salted_hash(salt, "date-shift", group), 16) % SHIFT_SPAN_DAYS


def shift_date(value: str, days: int) -> str:
    """A DA (YYYYMMDD) or the date part of a DT moved `days` back; '' when it is not a valid date."""
    text = value.strip()
    try:
        moved = dt.datetime.strptime(text[:8], "%Y%m%d").date() - dt.timedelta(days=days)
    except ValueError:
        return ""
    return moved.strftime("%Y%m%d") + text[8:]


def deidentify(dataset: Dataset, salt: str) -> Deidentified:
    """Return a PHI-free copy of `dataset` (the input is not changed) and its salted group/series keys."""
    ds = copy.deepcopy(dataset)
    patient_id = str(ds.get("PatientID", "") or "").strip()
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    group_source = ("patient", patient_id) if patient_id else ("study", study_uid)
    group = "p-" + salted_hash(salt, *group_source)
    series = "s-" + salted_hash(salt, "series", str(ds.get("SeriesInstanceUID", "") or ""))
    shift = date_shift_days(salt, group)
    table = profile_table()
    ds.walk(lambda parent, element: _apply_profile(parent, element, table, salt, shift))
    ds.PatientID = group
    _record_method(ds)
    _rebuild_file_meta(ds)
    return Deidentified(dataset=ds, group=group, series=series, shift_days=shift)


def _rebuild_file_meta(ds: Dataset) -> None:
    """New file meta (transfer syntax, SOP class and instance) and a zero preamble: nothing else survives."""
    old = getattr(ds, "file_meta", None)
    meta = FileMetaDataset()
    if old is not None and "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


def _action(element: DataElement, table: ProfileTable) -> str | None:
    """The table's action for this element, None if unnamed. 'X' for private tags and for the whole of
    the repeating groups: the table removes curves (50xx) and overlay data and comments (60xx); the rest of
    an overlay (rows, origin, ...) is of no use without its data."""
    tag = element.tag
    if tag.is_private or 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF:
        return "X"
    return table.actions.get(int(tag))


def _apply_profile(dataset: Dataset, element: DataElement, table: ProfileTable, salt: str, shift: int) -> None:
    """`Dataset.walk` callback: the profile's action for one element, at any nesting depth."""
    tag, vr = element.tag, element.VR
    action = _action(element, table)
    if action is None:  # not named by the table: a UID is remapped (standard ones stay), else KEEP or remove
        if vr == "UI" and element.value:
            element.value = _map_values(element.value, lambda value: _remap_uid(value, salt))
        elif element.keyword not in KEEP:
            del dataset[tag]
        return
    if tag == PATIENT_ID:
        return  # becomes the salted patient key
    if vr in ("DA", "DT") and action != "X" and tag not in NOT_SHIFTED:
        element.value = _map_values(element.value, lambda value: shift_date(value, shift)) if element.value else ""
    elif vr == "UI" and ("U" in action or "D" in action):
        element.value = _map_values(element.value, lambda value: _remap_uid(value, salt)) if element.value else ""
    elif vr == "SQ" and action in ("D", "Z/D", "X/Z/U*"):
        return  # kept: walk treats its items
    elif action.startswith("X"):
        del dataset[tag]
    elif action == "Z" or vr == "SQ":
        element.value = Sequence() if vr == "SQ" else ("" if vr in STRING_VRS else None)
    else:  # D, Z/D: a dummy value
        element.value = DUMMY.get(vr, "" if vr in STRING_VRS else None)


def _map_values(value, change):
    """Apply `change` to a single or multi-valued element's string values."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [change(str(item)) for item in value]
    return change(str(value))


def _remap_uid(uid: str, salt: str) -> str:
    """Standard UIDs (SOP classes, transfer syntaxes) stay; instance-specific ones are remapped."""
    return uid if uid in UID_dictionary else replacement_uid(salt, uid)


def _record_method(ds: Dataset) -> None:
    """Say in the data what was done (PS3.15 E.1.1 and CID 7050 codes)."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    items = []
    for value, meaning in PROFILE_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


def remaining_phi(dataset: Dataset) -> list[str]:
    """Attributes that should not be there after `deidentify` (empty when clean): a private tag, a curve or
    overlay, an attribute the table removes (X), an attribute neither in the table nor kept, a non-empty Z,
    a PatientID that is not a salted pseudonym, or dates not marked as modified."""
    table = profile_table()
    dates_modified = str(dataset.get("LongitudinalTemporalInformationModified", "")) == "MODIFIED"
    found: set[str] = set()

    def check(_: Dataset, element: DataElement) -> None:
        name = element.keyword or str(element.tag)
        action = _action(element, table)
        if element.tag == PATIENT_ID:
            if not _PSEUDONYM.fullmatch(str(element.value or "")):
                found.add(name)
        elif action is None:
            if element.keyword not in KEEP and element.VR != "UI":
                found.add(name)
        elif (action.startswith("X") and action != "X/Z/U*" and element.VR not in ("DA", "DT")) or \
                (action == "Z" and element.VR not in ("DA", "DT", "SQ") and element.value):
            found.add(name)
        elif element.VR in ("DA", "DT") and element.value and not dates_modified:
            found.add(name)

    clean = copy.copy(dataset)  # the method's own codes are the one sequence written after the walk
    if "DeidentificationMethodCodeSequence" in clean:
        del clean.DeidentificationMethodCodeSequence
    clean.walk(check)
    return sorted(found)


def dataset_bytes(dataset: Dataset) -> bytes:
    """Serialise a dataset read from a Part 10 file back to Part 10 bytes (deterministic)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
