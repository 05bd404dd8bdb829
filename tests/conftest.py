"""Shared pytest fixtures. Keep each section small and owned by the stage that needs it."""

from __future__ import annotations

from pathlib import Path

import pytest


# --- MLflow: each test keeps its own tracking store ----------------------------------------------
@pytest.fixture(autouse=True)
def mlflow_tracking_uri_stays_in_its_test():
    """Restore MLFLOW_TRACKING_URI after every test.

    mlflow.set_tracking_uri also writes that variable, and the stages read it before params
    (components/common/tracking.py): a stage run in-process would otherwise send every later test's
    runs to its own temporary store.
    """
    import os

    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# --- generate/ingest: a tiny generated PACS export -----------------------------------------------
TINY_EXPORT_CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]


def write_tiny_export(folder: Path, patients_per_class: int = 2, slices_per_patient: int = 2,
                      matrix: int = 64, seed: int = 3) -> Path:
    """Write a tiny generated export (<Class>/study-*/IM*.dcm, 64x64 CT DICOM by default) into `folder`."""
    from components.common.params import GenerateParams
    from components.generate.core import dicom_bytes, generate_export

    settings = GenerateParams(seed=seed, patients_per_class=patients_per_class,
                              slices_per_patient=slices_per_patient, matrix=matrix)
    for item in generate_export(settings, TINY_EXPORT_CLASSES):
        path = folder / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dicom_bytes(item.dataset))
    return folder


@pytest.fixture
def tiny_export(tmp_path: Path) -> Path:
    """tmp_path/export: 4 classes x 2 patients x 2 slices = 16 DICOM files of 64x64 pixels."""
    return write_tiny_export(tmp_path / "export")
# --- end generate/ingest ---------------------------------------------------------------------------
