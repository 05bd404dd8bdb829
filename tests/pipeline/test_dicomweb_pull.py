"""Ingest pulls from a live Orthanc PACS over DICOMweb: everything first, then only what is new."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pydicom
import pytest

from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, generate_export
from components.ingest.__main__ import main as ingest_main
from components.ingest.deid import remaining_phi
from tests.services import Orthanc
from tests.tiny import tiny_params, write_params

SLICES = 2
CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


@pytest.fixture(autouse=True)
def pull_salt(monkeypatch):
    monkeypatch.setenv("KIDNEY_CT_SALT", "pull-test-salt")


def labelled_studies(patients: int) -> dict[int, list[bytes]]:
    """patient number -> DICOM files of that patient in every class, the class named in StudyDescription."""
    settings = GenerateParams(seed=11, patients_per_class=patients, slices_per_patient=SLICES, matrix=64)
    by_patient: dict[int, list[bytes]] = {}
    for index, item in enumerate(generate_export(settings, CLASSES)):  # class by class, patient by patient
        item.dataset.StudyDescription = f"CT ABDOMEN - {item.label.upper()}"
        by_patient.setdefault((index // SLICES) % patients, []).append(dicom_bytes(item.dataset))
    return by_patient


def pull_params(tmp_path: Path, orthanc: Orthanc) -> str:
    raw = tiny_params(tmp_path)
    raw["ingest"].update(dicomweb_url=orthanc.dicomweb, dicomweb_user=orthanc.user, dicomweb_page_size=3,
                         dicomweb_retry_backoff_s=0.05)
    return str(write_params(raw, tmp_path / "params.yaml"))


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_pull_everything_then_only_new_studies(tmp_path, orthanc):
    studies = labelled_studies(patients=2)
    for data in studies[0]:
        orthanc.upload(data)
    params = pull_params(tmp_path, orthanc)
    ingested, store = tmp_path / "data" / "ingested", tmp_path / "data" / "store"

    assert ingest_main(["--params", params]) == 0
    first = json.loads((ingested / "ingest.json").read_text())
    assert (first["source"], first["studies_listed"], first["studies_pulled"]) == ("dicomweb", 4, 4)
    assert first["files_seen"] == first["ingested_new"] == 4 * SLICES
    assert len(read_rows(ingested / "manifest.csv")) == 4 * SLICES

    for data in studies[1]:
        orthanc.upload(data)
    unlabelled = pydicom.dcmread(io.BytesIO(studies[1][0]))
    # a new study holds new series (a series UID shared across studies breaks the UID hierarchy)
    unlabelled.StudyInstanceUID, unlabelled.SeriesInstanceUID = "1.2.3.4.5.6", "1.2.3.4.5.6.1"
    unlabelled.SOPInstanceUID = "1.2.3.4.5.6.1.1"
    unlabelled.file_meta.MediaStorageSOPInstanceUID = unlabelled.SOPInstanceUID
    unlabelled.StudyDescription = "CT ABDOMEN"
    orthanc.upload(dicom_bytes(unlabelled))

    assert ingest_main(["--params", params]) == 0
    second = json.loads((ingested / "ingest.json").read_text())
    assert (second["studies_listed"], second["studies_pulled"]) == (9, 5)  # 4 + 1 new studies only
    assert second["files_seen"] == 4 * SLICES + 1 and second["ingested_new"] == 4 * SLICES
    assert second["quarantined"] == 1
    assert "StudyDescription names none" in read_rows(ingested / "quarantine.csv")[0]["reason"]
    rows = read_rows(ingested / "manifest.csv")
    assert len(rows) == len({row["key"] for row in rows}) == 8 * SLICES
    assert {row["label"] for row in rows} == set(CLASSES) and len({row["group"] for row in rows}) == 8

    for row in rows:  # every stored object is de-identified and its source path names no UID
        stored = pydicom.dcmread(store / row["key"])
        assert remaining_phi(stored) == [] and stored.PatientID == row["group"]
        assert "1.2.826" not in row["source"]

    assert ingest_main(["--params", params]) == 0
    third = json.loads((ingested / "ingest.json").read_text())
    assert (third["studies_pulled"], third["files_seen"], third["images"]) == (0, 0, 8 * SLICES)
