"""De-identification of DICOM datasets: strip PHI, replace UIDs, keep salted grouping keys."""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

UID_ROOT = "1.2.826.0.1.3680043.8.498."
DEIDENTIFICATION_METHOD = "kidney-ct ingest: PHI and private tags removed, UIDs salted"  # LO: <= 64

PHI_KEYWORDS = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
        "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers",
        "PatientMotherBirthName", "MedicalRecordLocator", "IssuerOfPatientID",
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
        "ReferringPhysicianName", "ReferringPhysicianAddress", "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician", "OperatorsName",
        "AccessionNumber", "StudyID", "RequestedProcedureID", "DeviceSerialNumber",
        "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime",
        "InstanceCreationDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
        "InstanceCreationTime",
    }
)  # fmt: skip
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


@dataclass(frozen=True)
class Deidentified:
    """A de-identified copy of a dataset plus the salted keys that group its images."""

    dataset: Dataset
    group: str  # p-<16 hex>: salted hash of the original PatientID (or of the study if none)
    series: str  # s-<16 hex>: salted hash of the original SeriesInstanceUID


def salted_hash(salt: str, kind: str, value: str, length: int = 16) -> str:
    """HMAC-SHA256 of `value` keyed by the salt, namespaced by `kind`; first `length` hex digits."""
    return hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:length]


def replacement_uid(salt: str, original: str) -> str:
    """A valid DICOM UID derived deterministically from the salted hash of the original UID."""
    return generate_uid(UID_ROOT, [salted_hash(salt, "uid", original, length=64)])


def deidentify(dataset: Dataset, salt: str) -> Deidentified:
    """Return a PHI-free copy of `dataset` (the input is not changed) and its salted group/series keys."""
    ds = copy.deepcopy(dataset)
    patient_id = str(ds.get("PatientID", "") or "").strip()
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    group_source = ("patient", patient_id) if patient_id else ("study", study_uid)
    group = "p-" + salted_hash(salt, *group_source)
    series = "s-" + salted_hash(salt, "series", str(ds.get("SeriesInstanceUID", "") or ""))
    ds.remove_private_tags()
    ds.walk(_drop_phi)
    _replace_uids(ds, salt)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    return Deidentified(dataset=ds, group=group, series=series)


def _drop_phi(dataset: Dataset, element: DataElement) -> None:
    """`Dataset.walk` callback: delete PHI attributes at any nesting depth."""
    if element.keyword in PHI_KEYWORDS:
        del dataset[element.tag]


def _replace_uids(ds: Dataset, salt: str) -> None:
    for keyword in REPLACED_UIDS:
        if keyword in ds:
            setattr(ds, keyword, replacement_uid(salt, str(ds[keyword].value)))
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def remaining_phi(dataset: Dataset) -> list[str]:
    """Keywords of PHI attributes still present anywhere in the dataset (empty when clean)."""
    found: list[str] = []
    dataset.walk(lambda _, element: found.append(element.keyword) if element.keyword in PHI_KEYWORDS else None)
    return sorted(set(found))


def dataset_bytes(dataset: Dataset) -> bytes:
    """Serialise a dataset read from a Part 10 file back to Part 10 bytes (deterministic)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
