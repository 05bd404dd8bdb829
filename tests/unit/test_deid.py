"""PS3.15 Basic Profile de-identification of the generated CT slices (with the modified-dates option)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

from components.common.params import GenerateParams
from components.generate.core import generate_export
from components.ingest.deid import (
    KEEP,
    MIN_SHIFT_DAYS,
    SHIFT_SPAN_DAYS,
    dataset_bytes,
    deidentify,
    profile_table,
    remaining_phi,
    shift_date,
)

SALT = "deid-salt"


@pytest.fixture(scope="module")
def slices() -> list[Dataset]:
    """Two patients x two slices of one class (in memory)."""
    settings = GenerateParams(seed=5, patients_per_class=2, slices_per_patient=2, matrix=64)
    return [item.dataset for item in generate_export(settings, ["Cyst"])]


def days_between(a: str, b: str) -> int:
    return (dt.datetime.strptime(a, "%Y%m%d") - dt.datetime.strptime(b, "%Y%m%d")).days


def test_dates_move_back_by_one_salted_offset_per_patient(slices):
    first, second = (deidentify(slices[i], SALT) for i in (0, 1))
    assert first.shift_days == second.shift_days  # same patient: intervals survive
    assert MIN_SHIFT_DAYS <= first.shift_days < MIN_SHIFT_DAYS + SHIFT_SPAN_DAYS
    assert days_between(slices[0].StudyDate, first.dataset.StudyDate) == first.shift_days
    assert first.dataset.SeriesDate == first.dataset.StudyDate != slices[0].StudyDate
    assert first.dataset.LongitudinalTemporalInformationModified == "MODIFIED"
    assert deidentify(slices[0], "other-salt").shift_days != first.shift_days  # the salt decides the offset


def test_type2_attributes_stay_empty_and_patient_id_is_the_salted_key(slices):
    result = deidentify(slices[0], SALT)
    ds = result.dataset
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName", "StudyTime"):
        assert keyword in ds and ds.data_element(keyword).value in ("", None), keyword
    assert ds.PatientID == result.group
    for keyword in ("InstitutionName", "StudyDescription", "SeriesDescription"):
        assert keyword not in ds, keyword


def test_what_was_done_is_recorded_in_the_dataset(slices):
    ds = deidentify(slices[0], SALT).dataset
    assert ds.PatientIdentityRemoved == "YES" and "PS3.15" in ds.DeidentificationMethod
    codes = {(item.CodingSchemeDesignator, item.CodeValue) for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {("DCM", "113100"), ("DCM", "113107")}


def test_uids_are_remapped_consistently_everywhere_and_standard_uids_kept(slices):
    original = slices[0].copy()
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = CTImageStorage, slices[1].SOPInstanceUID
    original.SourceImageSequence = Sequence([reference])
    ds = deidentify(original, SALT).dataset
    neighbour = deidentify(slices[1], SALT).dataset
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == neighbour.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == CTImageStorage == ds.SOPClassUID
    assert ds.StudyInstanceUID == neighbour.StudyInstanceUID != slices[0].StudyInstanceUID


def test_unlisted_names_times_text_overlays_and_private_tags_go(slices):
    original = slices[0].copy()
    item = Dataset()
    item.PersonName, item.ObservationDateTime = "NURSE^JANE", "20240102101500"
    original.ContentSequence = Sequence([item])
    original.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data may hold burned-in text
    original.add_new(0x00291010, "LO", "PRIVATE PHI")
    original.AcquisitionTime = "101500"
    assert {"PatientID", "PatientName", "StudyDate"} <= set(remaining_phi(original))
    ds = deidentify(original, SALT).dataset
    assert remaining_phi(ds) == []
    assert ds.ContentSequence[0].PersonName == "ANONYMIZED" and "AcquisitionTime" not in ds  # D, X/Z
    assert ds.ContentSequence[0].ObservationDateTime.startswith(shift_date("20240102", deidentify(original, SALT)
                                                                           .shift_days))
    assert 0x60003000 not in ds and not any(element.tag.is_private for element in ds.iterall())


def test_shift_date_keeps_the_time_part_and_blanks_garbage():
    assert shift_date("20240301", 1) == "20240229"
    assert shift_date("20240301120000.5", 1) == "20240229120000.5"
    assert shift_date("not a date", 1) == ""


def test_the_action_table_is_the_committed_edition_of_table_e1_1():
    table = profile_table()
    assert table.edition == "2026c" and table.source.startswith("dicom-anonymizer==")
    assert len(table.actions) > 600
    assert set(table.actions.values()) == {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    named = {keyword_for_tag(tag) for tag in table.actions}
    assert not KEEP & named, "an allowlisted attribute the table names follows the table"
    for keyword, action in (("PatientName", "Z"), ("AdmissionID", "X"), ("StudyInstanceUID", "U"),
                            ("PatientID", "Z/D"), ("InstitutionName", "X/Z/D")):
        assert table.actions[next(tag for tag in table.actions if keyword_for_tag(tag) == keyword)] == action


def test_attributes_the_table_does_not_name_go_unless_a_ct_classifier_needs_them(slices):
    original = slices[0].copy()
    original.Manufacturer, original.ConvolutionKernel, original.SeriesNumber = "ACME", "B30f", 4
    original.add_new(0x00431234, "LO", "UNKNOWN PUBLIC TEXT")  # odd group: private, removed
    original.AdmissionID, original.StationAETitle, original.GantryID = "ADM-1", "CT-AE-1", "GANTRY-7"
    original.WindowCenterWidthExplanation = "DR SMITH PREFERS THIS"
    ds = deidentify(original, SALT).dataset
    for gone in ("AdmissionID", "StationAETitle", "GantryID", "WindowCenterWidthExplanation",
                 "StudyDescription", "SeriesDescription"):
        assert gone not in ds, gone
    assert (ds.ConvolutionKernel, ds.SeriesNumber, ds.KVP, ds.RescaleIntercept) == ("B30f", 4, original.KVP,
                                                                                    original.RescaleIntercept)
    assert ds.Manufacturer == "ACME"  # the scanner, kept for the drift monitor (not in the PS3.15 table)
    assert remaining_phi(ds) == [] and 0x00431234 not in ds


def test_file_meta_is_rebuilt_and_the_preamble_zeroed(slices):
    original = slices[0].copy()
    original.file_meta.SourceApplicationEntityTitle = "HOSPITAL-PACS"
    original.preamble = b"MRN 12345".ljust(128, b" ")
    data = dataset_bytes(deidentify(original, SALT).dataset)
    assert b"HOSPITAL-PACS" not in data and b"MRN 12345" not in data and data[:128] == b"\x00" * 128
