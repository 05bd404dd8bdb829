"""`dag.test()` of the whole retraining DAG, end to end, against real services: Orthanc (DICOMweb PACS) and
moto's S3 server. Every task succeeds (train mapped over the candidates; the first run's monitor finds no champion,
so alert is skipped), ingest updates its asset, a model is registered and packaged; then the PACS watcher DAG sees
a newly arrived study. Logs, stored objects and MLflow params carry none of the PHI the generator planted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, generate_export
from tests.phi import files_under, find_phi, mlflow_texts, planted_phi
from tests.pipeline.test_dag import DAGS, E2E_SCRIPT, run_child, run_dag_test
from tests.services import MotoS3, Orthanc, orthanc_available
from tests.tiny import wiring_params, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def labelled_export(settings: GenerateParams, classes: list[str]) -> list[bytes]:
    """The generated export with each study's class named in StudyDescription (as a PACS would hold it)."""
    files = []
    for item in generate_export(settings, classes):
        item.dataset.StudyDescription = f"CT ABDOMEN - {item.label}"
        files.append(dicom_bytes(item.dataset))
    return files


@pytest.fixture
def services(tmp_path, monkeypatch):
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    pacs, s3 = Orthanc(tmp_path / "orthanc").start(), MotoS3().start().reset()
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "KIDNEY_CT_SALT": "dag-services-salt", "KIDNEY_CT_DICOMWEB_PASSWORD": pacs.password}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3.client().create_bucket(Bucket="kidney-ct")
    yield pacs, s3
    s3.stop()
    pacs.stop()


def test_dag_runs_against_orthanc_and_s3_then_the_watcher_sees_new_studies(tmp_path, monkeypatch, services):
    pacs, s3 = services
    raw = wiring_params(tmp_path)  # the services are under test, not the model
    raw["paths"]["store"] = "s3://kidney-ct/store"
    raw["storage"].update(endpoint_url=s3.endpoint)
    raw["ingest"].update(dicomweb_url=pacs.dicomweb, dicomweb_user=pacs.user)
    params_file = write_params(raw, tmp_path / "params.yaml")
    settings = GenerateParams(**{**raw["generate"], "seed": 21})  # the PACS holds other patients than `generate`
    for data in labelled_export(settings, raw["classes"]):
        pacs.upload(data)

    report, output, migrate_s = run_dag_test(tmp_path, monkeypatch, params_file)
    print(f"airflow db migrate on SQLite took {migrate_s} s")  # shown with -s / -rA
    assert report["state"] == "success", report["tasks"]
    assert {f"train[{i}]" for i in range(len(raw["train"]["candidates"]))} <= set(report["tasks"])
    alert = report["tasks"].pop("alert[-1]")
    assert set(report["tasks"].values()) == {"success"}
    monitor = json.loads((Path(raw["paths"]["monitor"]) / "monitor.json").read_text())
    assert monitor["status"] == "no champion" and alert == "skipped"  # the first run: nothing to compare with
    manifest = Path(raw["paths"]["ingested"]) / "manifest.csv"
    assert manifest.is_file() and report["asset_events"] == [{"manifest": str(manifest)}]
    assert (Path(raw["paths"]["package"]) / "bento.json").is_file()
    ingest = json.loads((Path(raw["paths"]["ingested"]) / "ingest.json").read_text())
    assert (ingest["source"], ingest["studies_pulled"], ingest["images"]) == ("dicomweb", 12, 48)
    keys = s3.keys("kidney-ct", "store/")
    assert sum(key.startswith("store/images/") for key in keys) == 48 and "store/state/dicomweb.json" in keys
    assert (Path(raw["paths"]["registration"]) / "registration.json").is_file()

    phi = planted_phi(settings, raw["classes"])
    objects = [(key, s3.client().get_object(Bucket="kidney-ct", Key=key)["Body"].read()) for key in keys]
    outputs = files_under(tmp_path, skip=[Path(raw["paths"]["generated_export"]), tmp_path / "orthanc",
                                          tmp_path / "airflow_home", params_file])
    logs = [(f"log line {n}", line.encode()) for n, line in enumerate(output.splitlines())]
    assert find_phi(objects + list(outputs) + logs + mlflow_texts(raw["mlflow"]["tracking_uri"]), phi) == []

    conf = json.dumps({"project_dir": str(Path(__file__).resolve().parents[2]), "params_file": str(params_file)})
    quiet, _ = run_child(E2E_SCRIPT, str(DAGS), "kidney_ct_pacs_watch", conf, "no-retries", cwd=tmp_path, timeout=300)
    assert quiet["tasks"] == {"check_pacs[-1]": "skipped"} and quiet["asset_events"] == []
    newcomer = GenerateParams(**{**raw["generate"], "seed": 22, "patients_per_class": 1})
    for data in labelled_export(newcomer, ["Cyst"]):
        pacs.upload(data)
    woken, _ = run_child(E2E_SCRIPT, str(DAGS), "kidney_ct_pacs_watch", conf, "no-retries", cwd=tmp_path, timeout=300)
    assert woken["tasks"] == {"check_pacs[-1]": "success"}
    assert woken["asset_events"] == [{"new_studies": 1, "listed": 13}]
