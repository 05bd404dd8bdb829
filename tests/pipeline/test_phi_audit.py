"""The PHI audit: every attribute of DICOM PS3.15 Table E.1-1 carries a unique marker in every slice of an
export; after ingest (from a folder, and pulled from Orthanc over DICOMweb) and the stages after it, not
one marker is found in any byte the pipeline wrote (store objects, manifests, logs, MLflow database and
artifacts, Data Docs, the report, the model card), and no stored DICOM holds a private tag.

The attribute list comes from dicom-anonymizer's copy of the table (tests/e1_1_probe.py), not from
`components.ingest`: the audit shares no code with what it audits.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import keyword_for_tag

from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, generate_export
from tests.e1_1_probe import Marker, plant, table
from tests.phi import files_under
from tests.tiny import REPO, tiny_params, write_params

pytestmark = pytest.mark.slow

AFTER_INGEST = ("validate", "preprocess", "augment", "train", "evaluate", "leakage", "report", "register")
# The shapes every marker has (tests/e1_1_probe.py); a hit is then looked up among the exact markers.
SHAPES = re.compile(rb"(?=(MKR\d{4}Q|18\d{6}(?:235958\.9\d{5})?|235958\.9\d{5}|-9\d{5}\.25|-8\d{6}|"
                    rb"1\.2\.999\.\d+\.77|\d{3}W))")
REMOVED = ("X_TAGS", "X_Z_TAGS", "X_D_TAGS", "X_Z_D_TAGS")


def planted_export(folder: Path, raw: dict, label_in_description: bool = False) -> list[Marker]:
    """The tiny export with every table attribute marked in every slice; the markers (the same per file)."""
    markers: list[Marker] = []
    for item in generate_export(GenerateParams(**raw["generate"]), raw["classes"]):
        ds, markers, _ = plant(item.dataset)
        if label_in_description:  # the PACS pull reads the class from StudyDescription (a marked attribute)
            ds.StudyDescription = f"{ds.StudyDescription} {item.label.upper()}"
        path = folder / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dicom_bytes(ds))
    return markers


def find_markers(blobs, markers: list[Marker]) -> list[str]:
    """'<where>: <attribute> <marker>' for every marker found in any named blob."""
    by_text = {marker.text.encode(): marker for marker in markers}
    hits = set()
    for where, blob in blobs:
        for match in SHAPES.finditer(blob):
            for size in range(len(match.group(1)), 3, -1):  # a marker may be a prefix of the match
                marker = by_text.get(match.group(1)[:size])
                if marker:
                    hits.add(f"{where}: {keyword_for_tag(marker.tag) or hex(marker.tag)} {marker.text}")
                    break
    return sorted(hits)


def run_stage(stage: str, params: Path, cwd: Path, env: dict, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", f"components.{stage}", "--params", str(params), *extra], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{stage} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def stage_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")}
    env.update(KIDNEY_CT_SALT="audit-salt", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO),
               HOME=str(tmp_path / "home"))  # anything a library writes under ~ is scanned too
    return env


def audit_params(tmp_path: Path) -> dict:
    raw = tiny_params(tmp_path)
    raw["paths"]["source"] = str(tmp_path / "hospital")  # a real export, not the generated default
    # every slice carries every marker: two 64 px slices per patient audit the same attributes as more
    raw["generate"].update(slices_per_patient=2, matrix=64)
    candidate = next(iter(raw["train"]["candidates"]))
    raw["train"]["candidates"][candidate]["epochs"] = 1
    raw["report"].update(bootstrap_resamples=50, gradcam_per_class=1)
    return raw


def check_store(store: Path) -> None:
    """Every stored DICOM: no private tag, and no attribute the table removes, at any depth (dates excepted:
    the Modified Dates option keeps them shifted; the marker scan shows their values changed)."""
    removed = {tag for tag, category in table().items() if category in REMOVED}
    dicoms = sorted(store.rglob("*.dcm"))
    assert dicoms, "nothing was stored"
    for path in dicoms:
        ds = pydicom.dcmread(path)
        elements = list(ds.iterall()) + list(ds.file_meta)
        assert not [e.tag for e in elements if e.tag.is_private], path
        assert not [e.keyword or str(e.tag) for e in elements if int(e.tag) in removed and e.VR not in ("DA", "DT")]


def test_no_table_e1_1_marker_survives_a_folder_export_and_every_stage_after_ingest(tmp_path):
    raw = audit_params(tmp_path)
    markers = planted_export(tmp_path / "hospital", raw)
    assert len(markers) > 900
    seen = {hit.rsplit(" ", 1)[1] for hit in find_markers(files_under(tmp_path / "hospital"), markers)}
    assert seen == {marker.text for marker in markers}, "the scan must see every marker in the source export"
    params = write_params(raw, tmp_path / "params.yaml")
    env = stage_env(tmp_path)
    logs = [run_stage("ingest", params, tmp_path, env)]
    for stage in AFTER_INGEST:
        extra = ("--candidate", next(iter(raw["train"]["candidates"]))) if stage == "train" else ()
        logs.append(run_stage(stage, params, tmp_path, env, *extra))

    written = list(files_under(tmp_path, skip=[tmp_path / "hospital", params]))
    names = {Path(where).name for where, _ in written}
    for expected in ("manifest.csv", "mlruns.db", "index.html", "report.html"):
        assert expected in names, f"the pipeline wrote no {expected}: the scan would miss it"
    assert any("card" in name.lower() for name in names), "no model card written"
    log_lines = [(f"log line {n}", line.encode()) for n, line in enumerate("\n".join(logs).splitlines())]
    assert find_markers(written + log_lines, markers) == []
    check_store(Path(raw["paths"]["store"]))


def test_no_table_e1_1_marker_survives_a_dicomweb_pull_from_orthanc(tmp_path, orthanc):
    raw = audit_params(tmp_path)
    markers = planted_export(tmp_path / "hospital", raw, label_in_description=True)
    for path in sorted((tmp_path / "hospital").rglob("*.dcm")):
        orthanc.upload(path.read_bytes())
    raw["ingest"].update(dicomweb_url=orthanc.dicomweb, dicomweb_user=orthanc.user, dicomweb_retry_backoff_s=0.05)
    params = write_params(raw, tmp_path / "params.yaml")
    env = {**stage_env(tmp_path), "KIDNEY_CT_DICOMWEB_PASSWORD": orthanc.password}
    logs = [run_stage(stage, params, tmp_path, env) for stage in ("ingest", "validate", "preprocess")]

    stored = sorted(Path(raw["paths"]["store"]).rglob("*.dcm"))
    assert len(stored) == len(list((tmp_path / "hospital").rglob("*.dcm"))), "every study must be pulled"
    written = list(files_under(tmp_path, skip=[tmp_path / "hospital", tmp_path / "orthanc", params]))
    log_lines = [(f"log line {n}", line.encode()) for n, line in enumerate("\n".join(logs).splitlines())]
    assert find_markers(written + log_lines, markers) == []
    check_store(Path(raw["paths"]["store"]))
    assert pydicom.dcmread(io.BytesIO(stored[0].read_bytes())).PatientIdentityRemoved == "YES"
