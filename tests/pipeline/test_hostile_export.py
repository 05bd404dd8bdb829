"""A catalogue of hostile files in one export (docs/deidentification.md lists it): ingest quarantines each
with a plain reason, the counts add up, validate still passes, and the source is byte-for-byte untouched."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from components.generate.core import dicom_bytes
from components.ingest.__main__ import main as ingest_main
from components.validate.__main__ import main as validate_main
from tests.conftest import write_tiny_export

REPO = Path(__file__).resolve().parents[2]
Q = "quarantined"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels over a few bytes of data (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def _slice(template: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(template))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return dicom_bytes(ds)


def _deep_slice(template: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(template))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype="<i4").tobytes()
    return dicom_bytes(ds)


def _wide_slice(template: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(template))
    ds.Rows, ds.Columns = 64, 4100
    ds.PixelData = np.zeros((64, 4100), dtype="<i2").tobytes()
    return dicom_bytes(ds)


def _two_frames(template: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(template))
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return dicom_bytes(ds)


def catalogue(slice_: bytes, other: bytes, jpeg: bytes) -> list[tuple[str, bytes | str, str, str]]:
    """(path, bytes or '->target' for a symlink, outcome, reason prefix) per hostile file."""
    gray = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    return [
        ("Normal/empty.dcm", b"", Q, "file is empty"),
        ("Normal/truncated-header.dcm", slice_[:700], Q, "DICOM file has no pixel data"),
        ("Normal/truncated-pixels.dcm", slice_[: len(slice_) - 999], Q,
         "DICOM pixel data cannot be decoded (The number of bytes of pixel data is less than expected"),
        ("Cyst/page.jpg", b"<!DOCTYPE html><html><body>login</body></html>", Q, "not a PNG or JPEG image"),
        ("Cyst/bomb.png", _png_header_only(10_000, 10_000), Q, "image of 10000x10000 pixels is larger than allowed"),
        ("Cyst/bigger-bomb.png", _png_header_only(40_000, 40_000), Q, "image header claims more pixels than allowed"),
        ("Tumor/loop.dcm", "->loop.dcm", Q, "file cannot be read (Too many levels of symbolic links)"),
        ("Tumor/dangling.dcm", "->nowhere.dcm", Q, "file cannot be read (No such file or directory)"),
        ("Stone/same-bytes-as-a-normal.dcm", slice_, Q, "conflicting labels Normal vs Stone: the same bytes are also"),
        ("Normal/zz-copy-of-a-normal.dcm", slice_, Q, "conflicting labels Normal vs Stone"),  # every copy goes
        ("Normal/zz-copy-of-another-normal.dcm", other, "duplicate", ""),
        ("Normal/mr.dcm", _slice(other, Modality="MR"), Q, "modality MR, not CT"),
        ("Normal/no-modality.dcm", _slice(other, Modality=None), Q, "modality missing, not CT"),
        ("Normal/burned-in.dcm", _slice(other, BurnedInAnnotation="YES"), Q, "BurnedInAnnotation is YES"),
        ("Normal/secondary-capture.dcm", _slice(other, SOPClassUID=SecondaryCaptureImageStorage), Q,
         "secondary capture (Secondary Capture Image Storage)"),
        ("Normal/screen-save.dcm", _slice(other, ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]), Q,
         "ImageType says SCREEN SAVE"),
        ("Normal/palette.dcm", _slice(other, PhotometricInterpretation="PALETTE COLOR"), Q,
         "unsupported photometric interpretation PALETTE COLOR"),
        ("Normal/32-bit.dcm", _deep_slice(other), Q, "unsupported bit depth (BitsAllocated 32"),
        ("Normal/too-wide.dcm", _wide_slice(other), Q, "image is 4100x64 pixels: larger than the maximum side of 4096"),
        ("Normal/two-frames.dcm", _two_frames(other), Q, "expected one 2-D slice"),
        ("Normal/no-pixels.dcm", _slice(other, PixelData=None), Q, "DICOM file has no pixel data"),
        ("Stone/4x4.png", _png(gray[:4, :4]), Q, "image is 4x4 pixels: smaller than the minimum side of 64"),
        ("Stone/16-bit.png", _png(gray.astype(np.uint16) * 257), Q, "unsupported bit depth or colour mode 'I;16'"),
        ("Stone/truncated.jpg", jpeg[: len(jpeg) // 2], Q, "image file is damaged or truncated"),
        ("Stone/anim.gif", _gif(), Q, "unsupported image format"),
        ("Stone/.DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 64, Q, "not a PNG or JPEG image"),
        ("Tumor/notes.txt", b"Patient DOE^JOHN, MRN 1234", Q, "not a PNG or JPEG image"),
        ("Tumor/пациент-Ünïcødé.png", _png(gray[:4, :4]), Q, "image is 4x4 pixels"),
        ("Normal/Ünïcødé-患者.png", _png(gray), "stored", ""),
        ("Normal/png-named.dcm", _png(gray[::-1]), "stored", ""),
        ("Polyp/x.png", _png(gray[:, ::-1]), Q, "unknown label folder 'Polyp'"),
        ("stray.png", _png(gray.T), Q, "no label folder"),
    ]


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format="GIF")
    return buffer.getvalue()


def snapshot(folder: Path) -> dict[str, tuple]:
    """relative path -> (bytes, mode, mtime_ns), or ('link', target) for a symlink (never followed)."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root, name)
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_file():
                stat = path.stat()
                found[relative] = (path.read_bytes(), stat.st_mode, stat.st_mtime_ns)
    return found


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
def test_every_hostile_file_is_quarantined_with_its_reason_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("KIDNEY_CT_SALT", "hostile-salt")
    export = write_tiny_export(tmp_path / "export")
    good = sorted(export.rglob("*.dcm"))
    normal = sorted((export / "Normal").rglob("*.dcm"))
    slice_, other = normal[0].read_bytes(), normal[1].read_bytes()  # a Normal slice, and a neighbour as template
    relabelled = normal[0].relative_to(export).as_posix()  # also under Stone/ below: quarantined with its copies
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "JPEG")
    cases = catalogue(slice_, other, buffer.getvalue())
    assert len(cases) >= 20
    for path, data, _, _ in cases:
        target = export / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            target.symlink_to(data[2:])
        else:
            target.write_bytes(data)
    before = snapshot(export)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"] = {key: str(tmp_path / value) for key, value in raw["paths"].items()}
    raw["paths"]["source"] = str(export)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    assert ingest_main(["--params", str(params)]) == 0
    assert validate_main(["--params", str(params)]) == 0, "one bad file must never stop the run"

    ingested = tmp_path / "data" / "ingested"
    reasons = {row["source"]: row["reason"] for row in rows(ingested / "quarantine.csv")}
    stored = {row["source"] for row in rows(ingested / "manifest.csv")}
    for path, _, outcome, reason in cases:
        if outcome == Q:
            assert path in reasons and reasons[path].startswith(reason), (path, reasons.get(path))
        else:
            assert path not in reasons, (path, reasons[path])
            assert (path in stored) == (outcome == "stored"), path
    assert reasons[relabelled].startswith("conflicting labels Normal vs Stone") and relabelled not in stored
    counts = json.loads((ingested / "ingest.json").read_text())
    assert counts["quarantined"] == len(reasons) == sum(outcome == Q for _, _, outcome, _ in cases) + 1
    assert counts["conflicting_labels"] == 3
    assert counts["duplicates"] == 1 and counts["images"] == len(stored) == len(good) - 1 + 2
    assert counts["files_seen"] == len(good) + len(cases)
    assert counts["files_seen"] == counts["ingested_new"] + counts["already_present"] + counts["quarantined"] + \
        counts["duplicates"]
    assert snapshot(export) == before, "the source export must stay byte-for-byte untouched"
    assert json.loads((tmp_path / "reports" / "validate" / "result.json").read_text())["success"] is True
