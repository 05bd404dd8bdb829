"""The verdict as a DICOM SR (components/lib/structured_report.py) on in-memory headers: what it states, what it
references, its derived UIDs, the shadow marking, and the series it refuses."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, generate_export
from components.lib.structured_report import (
    SHADOW_DESCRIPTION,
    Algorithm,
    SeriesFinding,
    SrRefused,
    build_report,
    export_reports,
    report_bytes,
    report_uids,
)
from tests.fixtures import ct_dicom_bytes
from tests.sr_support import by_name, content_items, evidence_instances

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
ALGORITHM = Algorithm("kidney-ct-classifier", "7", {"classes": ",".join(CLASSES), "image_size": "32"})


@pytest.fixture(scope="module")
def headers() -> list[pydicom.Dataset]:
    """One generated patient's series: three CT slices' headers (no pixels), as the CLI reads them."""
    settings = GenerateParams(seed=3, patients_per_class=1, slices_per_patient=3, matrix=64)
    items = [item for item in generate_export(settings, CLASSES) if item.label == "Stone"]
    return [pydicom.dcmread(io.BytesIO(dicom_bytes(item.dataset)), stop_before_pixels=True) for item in items]


def finding(headers, stone: float = 0.61) -> SeriesFinding:
    rest = (1 - stone) / 3
    return SeriesFinding("Stone", {"Normal": rest, "Cyst": rest, "Tumor": rest, "Stone": stone}, "mean", 3,
                         [str(headers[2].SOPInstanceUID), str(headers[0].SOPInstanceUID)])


def read_back(report) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(report_bytes(report)))


def test_the_sr_states_the_verdict_probabilities_slices_model_and_notice(headers):
    sr = read_back(build_report(headers, finding(headers), ALGORITHM, clinical_use=False))
    items = by_name(sr)
    assert items["Finding"] == [("95570007", "SCT", "Kidney stone")]
    assert items["Probability of Stone"] == [pytest.approx(0.61)]
    assert items["Probability of Normal"] == items["Probability of Cyst"] == [pytest.approx(0.13)]
    assert items["Source of Measurement"] == [str(headers[2].SOPInstanceUID), str(headers[0].SOPInstanceUID)]
    assert items["Algorithm Name"] == ["kidney-ct-classifier"] and items["Algorithm Version"] == ["7"]
    assert set(items["Algorithm Parameters"]) == {"classes=Normal,Cyst,Tumor,Stone", "image_size=32",
                                                  "series_pooling=mean"}
    assert items["Series pooling"] == ["mean of 3 slice probabilities"]
    assert items["Model"] == ["kidney-ct-classifier version 7"]
    assert items["Device Observer Name"] == ["kidney-ct-classifier"]
    assert items["Decision support notice"][0].startswith("INVESTIGATIONAL") and "Not for diagnosis" in \
        items["Decision support notice"][0]
    assert sr.SeriesDescription == SHADOW_DESCRIPTION and sr.Modality == "SR"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurement Report"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    kinds = {(kind, name) for _, kind, name, _ in content_items(sr)}
    assert {("CONTAINER", "Measurement Group"), ("CONTAINER", "Qualitative Evaluations")} <= kinds


def test_the_sr_is_filed_with_the_study_it_read_and_references_every_instance(headers):
    source = headers[0]
    sr = read_back(build_report(headers, finding(headers), ALGORITHM, clinical_use=False))
    for key in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "StudyDate"):
        assert sr[key].value == source[key].value, key  # it goes back to this patient's study
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert evidence_instances(sr) == {str(ds.SOPInstanceUID) for ds in headers}
    series = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert [str(s.SeriesInstanceUID) for s in series] == [str(source.SeriesInstanceUID)]


def test_uids_are_derived_so_the_same_scoring_stores_the_same_instance(headers):
    first = build_report(headers, finding(headers), ALGORITHM, clinical_use=False)
    again = build_report(list(reversed(headers)), finding(headers), ALGORITHM, clinical_use=False)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    other = report_uids(headers, finding(headers, stone=0.7), ALGORITHM, clinical_use=False)
    assert other[0] == first.SeriesInstanceUID and other[1] != first.SOPInstanceUID  # new content, same series
    newer = report_uids(headers, finding(headers), Algorithm("kidney-ct-classifier", "8", {}), clinical_use=False)
    assert newer[0] != first.SeriesInstanceUID  # a new model version reports in its own series


def test_clinical_use_drops_the_investigational_marking(headers):
    sr = read_back(build_report(headers, finding(headers), ALGORITHM, clinical_use=True))
    notice = by_name(sr)["Decision support notice"][0]
    assert "INVESTIGATIONAL" not in notice and "radiologist makes the diagnosis" in notice
    assert "INVESTIGATIONAL" not in sr.SeriesDescription
    shadow = build_report(headers, finding(headers), ALGORITHM, clinical_use=False)
    assert sr.SOPInstanceUID != shadow.SOPInstanceUID


def test_a_class_without_a_snomed_concept_gets_a_local_code(headers):
    odd = SeriesFinding("Hydronephrosis", {"Normal": 0.2, "Hydronephrosis": 0.8}, "max", 3,
                        [str(headers[0].SOPInstanceUID)])
    items = by_name(read_back(build_report(headers, odd, ALGORITHM, clinical_use=False)))
    assert items["Finding"] == [("Hydronephrosis", "99KIDCT", "Hydronephrosis")]
    assert items["Probability of Hydronephrosis"] == [pytest.approx(0.8)]


def header_of(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def test_series_without_a_usable_header_are_refused_with_a_reason(headers):
    with pytest.raises(SrRefused, match="no DICOM header"):
        build_report([], finding(headers), ALGORITHM, clinical_use=False)
    bare = header_of(ct_dicom_bytes(np.zeros((8, 8), np.int16)))  # the fixture has no study or series UID
    with pytest.raises(SrRefused, match="lacks SeriesInstanceUID, StudyInstanceUID"):
        build_report([bare], finding(headers), ALGORITHM, clinical_use=False)
    moved = header_of(dicom_bytes(headers[1]))
    moved.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(SrRefused, match="more than one study"):
        build_report([headers[0], moved], finding(headers), ALGORITHM, clinical_use=False)
    with pytest.raises(SrRefused, match="not among the series' instances"):
        build_report(headers[:1], finding(headers), ALGORITHM, clinical_use=False)


def test_an_export_gets_an_sr_per_dicom_series_and_png_series_a_refusal(headers):
    series_uid = str(headers[0].SeriesInstanceUID)
    slices = [{"file": f"ct/{i}.dcm", "series": series_uid, "p_Normal": 0.1, "p_Cyst": 0.1, "p_Tumor": 0.1,
               "p_Stone": p} for i, p in enumerate([0.5, 0.9, 0.7])]
    slices += [{"file": f"png/{i}.png", "series": "png", "p_Normal": 0.7, "p_Cyst": 0.1, "p_Tumor": 0.1,
                "p_Stone": 0.1} for i in range(2)]
    series = [{"series": series_uid, "slices": 3, "verdict": "Stone", "pooling": "mean", "p_Normal": 0.1,
               "p_Cyst": 0.1, "p_Tumor": 0.1, "p_Stone": 0.7},
              {"series": "png", "slices": 2, "verdict": "Normal", "pooling": "mean", "p_Normal": 0.7, "p_Cyst": 0.1,
               "p_Tumor": 0.1, "p_Stone": 0.1}]
    known = {f"ct/{i}.dcm": ds for i, ds in enumerate(headers)}
    reports, refused = export_reports(slices, series, known, CLASSES, ALGORITHM, False, k=2)
    assert len(reports) == 1 and refused == [{"series": "png", "reason": refused[0]["reason"]}]
    assert "PNG/JPEG slices cannot get one" in refused[0]["reason"]
    assert by_name(reports[0])["Source of Measurement"] == [str(headers[1].SOPInstanceUID),
                                                            str(headers[2].SOPInstanceUID)]


def test_the_conformal_set_and_the_refer_flag_read_back_with_plain_pydicom(headers):
    """Issue 34: each class in the study's set, the refer flag (SNOMED CT Yes/No) and the sentence; the private
    coding scheme declared in the Coding Scheme Identification Sequence."""
    import dataclasses

    unsure = dataclasses.replace(finding(headers), prediction_set=["Stone", "Tumor"], coverage=0.9)
    sr = read_back(build_report(headers, unsure, ALGORITHM, clinical_use=False))
    items = by_name(sr)
    assert items["Prediction set member"] == [("95570007", "SCT", "Kidney stone"), ("108369006", "SCT", "Neoplasm")]
    assert items["Refer to radiologist"] == [("373066001", "SCT", "Yes")]
    assert "Refer to a radiologist" in items["Prediction set"][0] and "90%" in items["Prediction set"][0]
    schemes = {str(item.CodingSchemeDesignator): item for item in sr.CodingSchemeIdentificationSequence}
    assert "99KIDCT" in schemes and schemes["99KIDCT"].CodingSchemeName == "kidney-ct pipeline local codes"

    sure = dataclasses.replace(finding(headers), prediction_set=["Stone"], coverage=0.9)
    items = by_name(read_back(build_report(headers, sure, ALGORITHM, clinical_use=False)))
    assert items["Refer to radiologist"] == [("373067005", "SCT", "No")]
    assert items["Prediction set member"] == [("95570007", "SCT", "Kidney stone")]
    without = by_name(read_back(build_report(headers, finding(headers), ALGORITHM, clinical_use=False)))
    assert "Refer to radiologist" not in without and "Prediction set member" not in without
