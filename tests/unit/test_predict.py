"""Batch scoring of an export: slices as serving sees them, series verdicts, quarantine with reasons."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from components.predict.core import Contract, score_export
from tests.fixtures import ct_dicom_bytes, png_bytes

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
CONTRACT = Contract(CLASSES, 16, 40, 400)
NOISE_PNG = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64)))


def brightness_model(batch: np.ndarray) -> np.ndarray:
    """Fake model: bright slices are Tumor, dark ones Normal (confidence grows with the distance from grey)."""
    bright = batch.reshape(len(batch), -1).mean(axis=1) / 255.0
    p = np.full((len(batch), 4), 0.05)
    p[:, 2] = 0.05 + 0.85 * bright
    p[:, 0] = 0.05 + 0.85 * (1 - bright)
    return p / p.sum(axis=1, keepdims=True)


def items(files: dict[str, bytes]):
    return [(name, (lambda data: lambda: data)(data)) for name, data in files.items()]


def dicom(value: int, series: str) -> bytes:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(DicomBytesIO(ct_dicom_bytes(np.full((24, 24), value, np.int16))))
    ds.SeriesInstanceUID = series
    buffer = DicomBytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_slices_are_grouped_by_folder_and_each_series_gets_a_pooled_verdict():
    files = {"s1/a.png": png_bytes(np.full((20, 20), 230)), "s1/b.png": png_bytes(np.full((20, 20), 200)),
             "s1/c.png": png_bytes(np.full((20, 20), 40)), "s2/a.png": png_bytes(np.full((20, 20), 10))}
    scored = score_export(items(files), brightness_model, CONTRACT, "mean", progress=False)
    by_series = {r["series"]: r for r in scored.series}
    assert set(by_series) == {"s1", "s2"} and by_series["s1"]["slices"] == 3
    assert by_series["s1"]["verdict"] == "Tumor" and by_series["s1"]["top_slice"] == "s1/a.png"
    assert by_series["s2"]["verdict"] == "Normal"
    by_file = {r["file"]: r for r in scored.slices}
    assert by_file["s1/c.png"]["predicted"] == "Normal" and by_file["s1/c.png"]["series_verdict"] == "Tumor"
    assert sum(by_file["s1/a.png"][f"p_{c}"] for c in CLASSES) == pytest.approx(1.0, abs=1e-5)
    assert scored.summary["series_per_verdict"] == {"Tumor": 1, "Normal": 1}


def test_dicom_slices_group_by_series_uid_not_folder_and_are_windowed_as_served():
    files = {"study/x1.dcm": dicom(1500, "1.2.3"), "study/x2.dcm": dicom(1500, "1.2.3"),
             "study/y1.dcm": dicom(0, "1.2.4")}
    scored = score_export(items(files), brightness_model, CONTRACT, progress=False)
    assert {r["series"]: r["verdict"] for r in scored.series} == {"1.2.3": "Tumor", "1.2.4": "Normal"}
    # stored 1500 = 476 HU (intercept -1024), above the 40/400 window: fully bright, as prepare_for_model makes it
    bright = next(r for r in scored.slices if r["file"] == "study/x1.dcm")
    assert bright["p_Tumor"] == pytest.approx(0.9 / 1.05, abs=1e-4)


def test_unreadable_and_unsupported_files_are_quarantined_with_reasons_and_counts_add_up():
    def broken():
        raise PermissionError("permission denied")

    files = items({"s/ok.png": png_bytes(np.full((20, 20), 128)), "s/notes.txt": b"radiology notes",
                   "s/empty.png": b"", "s/cut.png": NOISE_PNG[: len(NOISE_PNG) // 2],
                   "s/nopixels.dcm": ct_dicom_bytes(None)}) + [("s/locked.png", broken)]
    scored = score_export(files, brightness_model, CONTRACT, progress=False)
    reasons = {q["file"]: q["reason"] for q in scored.quarantine}
    assert reasons == {"s/notes.txt": "not a PNG or JPEG image", "s/empty.png": "file is empty",
                       "s/cut.png": reasons["s/cut.png"], "s/nopixels.dcm": "DICOM file has no pixel data",
                       "s/locked.png": "cannot read the file (PermissionError: permission denied)"}
    assert "damaged or truncated" in reasons["s/cut.png"]
    s = scored.summary
    assert s["files_seen"] == 6 and s["slices_scored"] == 1 and s["quarantined"] == 5 and s["series"] == 1


def test_a_model_with_the_wrong_number_of_outputs_is_refused():
    with pytest.raises(ValueError, match="returned 3 scores per slice for 4 classes"):
        score_export(items({"a.png": png_bytes(np.zeros((8, 8)))}), lambda b: np.ones((len(b), 3)) / 3,
                     CONTRACT, progress=False)


def write_export(root):
    export = root / "export"
    for series, value in (("a", 200), ("b", 30)):
        (export / series).mkdir(parents=True)
        for k in range(3):
            (export / series / f"{k}.png").write_bytes(png_bytes(np.full((40, 40), value + k)))
    (export / "b" / "broken.png").write_bytes(NOISE_PNG[:300])


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A project folder whose sqlite registry holds a tiny champion (32 px), and an export to score."""
    import mlflow

    from tests.package_support import register_tiny_model, write_project

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.chdir(tmp_path)
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    register_tiny_model(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it: params decide
    write_project(tmp_path, "1")
    write_export(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(previous[0])  # predict connected this process to the project's registry
    mlflow.set_registry_uri(previous[1])


def test_cli_scores_an_export_with_the_champion_and_leaves_the_source_untouched(project, capsys):
    from components.predict.__main__ import main

    before = sorted((p.name, p.stat().st_mtime_ns) for p in (project / "export").rglob("*"))
    assert main(["export", "--out", "scored/predictions.csv", "--params", "params.yaml", "--no-progress"]) == 0
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (project / "export").rglob("*")) == before
    slices = pd.read_csv(project / "scored/predictions.csv")
    assert len(slices) == 6 and set(slices["series"]) == {"a", "b"}
    assert np.allclose(slices[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-4)
    series = pd.read_csv(project / "scored/predictions.series.csv")
    assert series["slices"].tolist() == [3, 3] and set(series["verdict"]) <= set(CLASSES)
    quarantine = pd.read_csv(project / "scored/predictions.quarantine.csv")
    assert quarantine["file"].tolist() == ["b/broken.png"] and "damaged or truncated" in quarantine["reason"][0]
    summary = json.loads((project / "scored/predictions.summary.json").read_text())
    assert summary["model"] == "models:/kidney-ct-classifier/1" and summary["image_size"] == 32
    assert summary["files_seen"] == 7 and summary["quarantined"] == 1

    with zipfile.ZipFile(project / "export.zip", "w") as archive:  # a zip of the same export scores the same
        for path in sorted((project / "export").rglob("*.png")):
            archive.write(path, path.relative_to(project / "export").as_posix())
    assert main(["export.zip", "--out", "zip.csv", "--no-progress"]) == 0
    assert pd.read_csv(project / "zip.csv")["p_Tumor"].tolist() == pytest.approx(
        slices["p_Tumor"].tolist(), abs=1e-5)


def test_cli_refuses_plainly_without_a_traceback(tmp_path, monkeypatch, caplog):
    from components.predict.__main__ import main
    from tests.package_support import write_project

    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, "1")
    write_export(tmp_path)
    project = tmp_path
    assert main(["missing", "--out", "p.csv"]) == 2
    assert main(["export", "--out", "export/p.csv"]) == 2  # would write into the source
    assert main(["export", "--out", "p.csv", "--model", "nowhere/model.keras"]) == 2
    text = caplog.text
    assert "missing does not exist" in text and "lies inside SOURCE" in text and "nowhere/model.keras not found" in text
    assert "Traceback" not in text and not (project / "export" / "p.csv").exists()


def test_a_registered_models_certified_pooling_wins_and_pooling_flag_cannot_change_it():
    from types import SimpleNamespace

    from components.common.cli import StageError
    from components.predict.__main__ import series_pooling

    params = SimpleNamespace(evaluate=SimpleNamespace(series_pooling="mean"))
    assert series_pooling(None, "gem", params) == "gem" and series_pooling("gem", "gem", params) == "gem"
    with pytest.raises(StageError, match="certified with 'gem'"):
        series_pooling("max", "gem", params)
    assert series_pooling("max", None, params) == "max" and series_pooling(None, None, params) == "mean"
