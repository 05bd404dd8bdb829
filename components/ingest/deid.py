"""De-identification of DICOM datasets after the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile, with the "Retain Longitudinal Temporal Information with Modified Dates" option.

For the attributes a CT export carries (PS3.15 Table E.1-1 action codes):
- X (remove): addresses, other IDs/names, institution, station, physicians and operators, descriptions
  and comments, device serial number, patient age/size/weight, private tags, overlays and curves;
- Z (keep, empty): patient name and birth date, sex, accession number, study ID, referring physician,
  study time (type 2 attributes must stay present);
- D (dummy): PatientID becomes the salted patient key `p-<16 hex>` (the grouping key);
- U (UIDs): every non-standard UID is remapped by a salted hash, so it stays consistent across files;
- dates (DA, DT) are shifted by a per-patient salted number of days (intervals between studies of one
  patient survive); times (TM) other than the study time are removed.
Any other person name, date, time, UID or free text (PN, DA, DT, TM, UI, ST, LT, UT) that the table does
not name gets the same treatment by its VR. What was done is recorded in the dataset itself:
PatientIdentityRemoved, DeidentificationMethod, DeidentificationMethodCodeSequence and
LongitudinalTemporalInformationModified.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import io
import re
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary, generate_uid

UID_ROOT = "1.2.826.0.1.3680043.8.498."
DEIDENTIFICATION_METHOD = "PS3.15 E Basic Profile; modified dates; kidney-ct ingest"  # LO: <= 64 chars
PROFILE_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
MIN_SHIFT_DAYS, SHIFT_SPAN_DAYS = 3650, 3650  # dates move 10 to 20 years back, per patient

REMOVED = frozenset(
    {
        "PatientBirthTime", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress",
        "PatientTelephoneNumbers", "PatientMotherBirthName", "MedicalRecordLocator", "IssuerOfPatientID",
        "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
        "PatientComments", "MilitaryRank", "BranchOfService", "CountryOfResidence", "RegionOfResidence",
        "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
        "StationName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician",
        "OperatorsName", "DeviceSerialNumber", "StudyDescription", "SeriesDescription", "ImageComments",
        "ProtocolName", "RequestedProcedureID", "RequestedProcedureDescription", "RequestAttributesSequence",
        "ReferencedStudySequence", "ReferencedPatientSequence", "PerformedProcedureStepID",
        "PerformedProcedureStepDescription", "AdmittingDiagnosesDescription", "DerivationDescription",
        "AcquisitionDeviceProcessingDescription", "TextComments", "ScheduledProcedureStepID",
    }
)  # fmt: skip
EMPTIED = frozenset({"PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                     "ReferringPhysicianName", "StudyTime"})
SHIFTED_VRS = ("DA", "DT")
FALLBACK_REMOVED_VRS = ("PN", "TM", "ST", "LT", "UT")
# Every attribute that carries PHI in an original export (kept for callers that list them).
PHI_KEYWORDS = REMOVED | EMPTIED | {"PatientID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                                    "AcquisitionDateTime", "InstanceCreationDate", "SeriesTime", "AcquisitionTime",
                                    "ContentTime", "InstanceCreationTime"}
_PSEUDONYM = re.compile(r"p-[0-9a-f]{16}")


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
    ds.remove_private_tags()
    _remove_overlays_and_curves(ds)
    ds.walk(lambda parent, element: _apply_profile(parent, element, salt, shift))
    ds.PatientID = group
    _record_method(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return Deidentified(dataset=ds, group=group, series=series, shift_days=shift)


def _remove_overlays_and_curves(ds: Dataset) -> None:
    """Repeating groups 50xx (curves) and 60xx (overlays) may hold burned-in text: remove them."""
    for tag in [tag for tag in ds.keys() if 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF]:
        del ds[tag]


def _apply_profile(dataset: Dataset, element: DataElement, salt: str, shift: int) -> None:
    """`Dataset.walk` callback: the Basic Profile action for one element, at any nesting depth."""
    keyword, vr = element.keyword, element.VR
    if keyword in REMOVED:
        del dataset[element.tag]
    elif keyword in EMPTIED:
        element.value = ""
    elif vr in SHIFTED_VRS and element.value:
        element.value = _map_values(element.value, lambda value: shift_date(value, shift))
    elif vr == "UI" and element.value:
        element.value = _map_values(element.value, lambda value: _remap_uid(value, salt))
    elif vr in FALLBACK_REMOVED_VRS and keyword != "PatientID":
        del dataset[element.tag]


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
    """Keywords of attributes still carrying PHI anywhere in the dataset (empty when clean).

    PHI means: a removed attribute present, an emptied one with a value, a PatientID that is not a
    salted pseudonym, dates not marked as modified, or any private tag.
    """
    dates_modified = str(dataset.get("LongitudinalTemporalInformationModified", "")) == "MODIFIED"
    found: set[str] = set()

    def check(_: Dataset, element: DataElement) -> None:
        keyword = element.keyword
        if element.tag.is_private:
            found.add(f"private {element.tag}")
        elif keyword in REMOVED or (keyword in EMPTIED and element.value not in ("", None)):
            found.add(keyword)
        elif keyword == "PatientID" and not _PSEUDONYM.fullmatch(str(element.value or "")):
            found.add(keyword)
        elif element.VR in SHIFTED_VRS and element.value and not dates_modified:
            found.add(keyword)
        elif keyword in PHI_KEYWORDS and element.VR == "TM" and element.value:
            found.add(keyword)

    dataset.walk(check)
    return sorted(found)


def dataset_bytes(dataset: Dataset) -> bytes:
    """Serialise a dataset read from a Part 10 file back to Part 10 bytes (deterministic)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
