"""The fake PHI the generator plants, and a scanner that finds any of it in bytes or text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom.uid import generate_uid

from components.common.params import GenerateParams
from components.generate.core import UID_ROOT, fake_study


def planted_phi(settings: GenerateParams, classes: Sequence[str]) -> set[str]:
    """Every identifying value `generate` writes: names, IDs, dates, accession, institution, UIDs."""
    values: set[str] = set()
    for label in classes:
        for patient in range(settings.patients_per_class):
            study = fake_study(settings, label, patient)
            name = study.patient_name
            values |= {name, name.replace("^", " "), study.patient_id, study.birth_date, study.study_date,
                       study.accession, study.institution, study.referring_physician,
                       study.referring_physician.replace("^", " ").strip(), study.study_uid, study.series_uid,
                       study.frame_uid}
            values |= {generate_uid(UID_ROOT, [study.series_uid, str(z)])
                       for z in range(settings.slices_per_patient)}
    return values


def find_phi(blobs: Iterable[tuple[str, bytes]], phi: set[str]) -> list[str]:
    """'<where>: <value>' for every planted value found in any of the named blobs."""
    needles = [(value, value.encode()) for value in sorted(phi)]
    return [f"{where}: {value}" for where, blob in blobs for value, needle in needles if needle in blob]


def files_under(root: Path, skip: Sequence[Path] = ()) -> Iterable[tuple[str, bytes]]:
    """(path, bytes) of every file under `root` except those inside `skip`."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path.is_relative_to(folder) for folder in skip):
            yield str(path), path.read_bytes()


def mlflow_texts(tracking_uri: str) -> list[tuple[str, bytes]]:
    """Every param and tag (key and value) of every run in the tracking store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    texts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            for kind, items in (("param", run.data.params), ("tag", run.data.tags)):
                texts += [(f"mlflow {kind} {key}", f"{key}={value}".encode()) for key, value in items.items()]
    return texts
