"""The verdict goes back to the PACS: a study pulled from a real Orthanc is scored with the registry's champion,
its DICOM SR stored back by STOW-RS, found by QIDO-RS under the same study and read back item by item; a second
scoring stores no second SR, and no patient identifier reaches a log or the files outside the SR folder."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, generate_export
from components.lib.pacs import PacsClient, dataset_bytes, retrying_session
from components.predict.__main__ import main as predict_main
from tests.fixtures import png_bytes
from tests.package_support import CLASSES, register_tiny_model
from tests.services import Orthanc
from tests.sr_support import by_name, evidence_instances
from tests.tiny import tiny_params, write_params

SLICES = 4
SNOMED = {"Normal": "17621005", "Cyst": "441457006", "Tumor": "108369006", "Stone": "95570007"}


@pytest.fixture
def project(tmp_path, monkeypatch, orthanc):
    """params.yaml pointing at Orthanc, and a sqlite registry whose champion is a tiny model (32 px)."""
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    raw = tiny_params(tmp_path)
    raw["ingest"].update(dicomweb_url=orthanc.dicomweb, dicomweb_user=orthanc.user, dicomweb_retry_backoff_s=0.05)
    write_params(raw, tmp_path / "params.yaml")
    register_tiny_model(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def one_study(orthanc: Orthanc) -> list[pydicom.Dataset]:
    """One generated patient's CT series, uploaded to Orthanc; its datasets."""
    settings = GenerateParams(seed=5, patients_per_class=1, slices_per_patient=SLICES, matrix=64)
    datasets = [item.dataset for item in generate_export(settings, CLASSES) if item.label == "Cyst"]
    for ds in datasets:
        orthanc.upload(dicom_bytes(ds))
    return datasets


def pacs(orthanc: Orthanc) -> PacsClient:
    return PacsClient(orthanc.dicomweb, retrying_session(orthanc.user, orthanc.password, 2, 0.05))


def pull_study(client: PacsClient, folder: Path) -> None:
    """The hospital's export: every instance of every study, as WADO-RS returns it (not de-identified)."""
    for study in client.studies():
        for ref in client.series(study.uid):
            for ds in client.instances(ref):
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(dataset_bytes(ds))


def identifiers(datasets: list[pydicom.Dataset]) -> set[str]:
    ds = datasets[0]
    return {str(ds.PatientName), str(ds.PatientName).replace("^", " "), str(ds.PatientID), str(ds.PatientBirthDate),
            str(ds.AccessionNumber), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
            *(str(d.SOPInstanceUID) for d in datasets)}


def test_the_verdict_is_stored_back_as_an_sr_with_the_study_once(project, orthanc, caplog):
    source = one_study(orthanc)
    client = pacs(orthanc)
    pull_study(client, project / "export")
    study = str(source[0].StudyInstanceUID)
    args = ["export", "--out", "scored/p.csv", "--sr", "sr", "--store-to-pacs", "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert predict_main(args) == 0
        assert predict_main(args) == 0  # the same study scored again

    found = client.web.search_for_series(study, search_filters={"Modality": "SR"})
    assert len(found) == 1, "one SR series under the study it read"
    instances = client.web.search_for_instances(study, str(found[0]["0020000E"]["Value"][0]))
    assert len(instances) == 1, "the second scoring stored the same instance, not a second one"
    sr = client.web.retrieve_instance(study, str(found[0]["0020000E"]["Value"][0]),
                                      str(instances[0]["00080018"]["Value"][0]))
    local = sorted((project / "sr").iterdir())
    assert [p.name for p in local] == [f"{sr.SOPInstanceUID}.dcm"]
    assert pydicom.dcmread(local[0]).SOPInstanceUID == sr.SOPInstanceUID

    series = pd.read_csv(project / "scored/p.series.csv").iloc[0]
    slices = pd.read_csv(project / "scored/p.csv")
    verdict = series["verdict"]
    items = by_name(pydicom.dcmread(io.BytesIO(dataset_bytes(sr))))  # read back with plain pydicom
    assert items["Finding"] == [(SNOMED[verdict], "SCT", items["Finding"][0][2])]
    for label in CLASSES:
        assert items[f"Probability of {label}"] == [pytest.approx(series[f"p_{label}"], abs=1e-6)]
    top = slices.sort_values(f"p_{verdict}", ascending=False, kind="stable")["file"].head(3)
    assert items["Source of Measurement"] == [name.removesuffix(".dcm") for name in top]
    assert items["Algorithm Name"] == ["kidney-ct-classifier"] and items["Algorithm Version"] == ["1"]
    assert "series_pooling=mean" in items["Algorithm Parameters"]
    assert items["Series pooling"] == [f"mean of {SLICES} slice probabilities"]
    assert items["Model"] == ["kidney-ct-classifier version 1"]
    assert items["Decision support notice"][0].startswith("INVESTIGATIONAL")
    assert "INVESTIGATIONAL" in sr.SeriesDescription
    assert sr.StudyInstanceUID == study and sr.PatientID == source[0].PatientID
    assert evidence_instances(sr) == {str(ds.SOPInstanceUID) for ds in source}

    summary = json.loads((project / "scored/p.summary.json").read_text())
    assert summary["structured_reports"] == {"folder": "sr", "written": 1, "stored": 1, "refused": {},
                                             "marking": "investigational, not for diagnosis"}
    phi = identifiers(source) | {str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID)}
    assert not [value for value in phi if value in caplog.text], "a patient identifier reached the log"
    summary_text = (project / "scored/p.summary.json").read_text()
    assert not [value for value in phi if value in summary_text]


def test_store_to_pacs_refuses_plainly_without_sr_or_a_pacs(project, orthanc, caplog):
    one_study(orthanc)
    pull_study(pacs(orthanc), project / "export")
    (project / "png").mkdir()
    (project / "png" / "a.png").write_bytes(png_bytes(np.full((40, 40), 90)))
    assert predict_main(["export", "--out", "a.csv", "--store-to-pacs"]) == 2
    assert predict_main(["png", "--out", "b.csv", "--sr", "sr-png", "--no-progress"]) == 2
    raw = tiny_params(project)
    write_params(raw, project / "nopacs.yaml")
    assert predict_main(["export", "--out", "c.csv", "--sr", "sr", "--store-to-pacs", "--params", "nopacs.yaml"]) == 2
    assert predict_main(["export", "--out", "d.csv", "--sr", "sr", "--store-to-pacs", "--no-progress",
                         "--pacs-url", "http://127.0.0.1:9/dicom-web"]) == 2
    text = caplog.text
    assert "--store-to-pacs stores the structured reports --sr DIR writes" in text
    assert "no series could get a DICOM structured report" in text and "PNG/JPEG slices cannot get one" in text
    assert "pass --pacs-url or set ingest.dicomweb_url" in text and "unreachable during STOW-RS store" in text
    assert "Traceback" not in text
