"""Validate stage core: the image table on tiny fixtures and the GX suite on good and bad tables."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.common.storage import LocalStore
from components.lib.gx_suite import SuiteError, load_declared_suite, run_suite
from components.validate.core import (
    SUITE_FILE,
    TABLE_COLUMNS,
    build_table,
    expand_suite,
    share_bounds,
    share_wording,
    suite_parameters,
)
from components.validate.report import ShareLimits, summarise

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
LIMITS = ShareLimits(min_share=0.05, max_share=0.70)


def png_bytes(pixels: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(raw: np.ndarray, intercept: float = -1024.0) -> bytes:
    """A minimal CT slice: signed 16-bit pixels with RescaleIntercept."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    ds.PixelData = raw.astype(np.int16).tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def manifest_row(key: str, label: str | None = "Normal", fmt: str = "png") -> dict:
    return {"key": key, "sha256": f"sha-{key}", "source": f"export/{key}", "label": label,
            "group": "g1", "series": "s1", "format": fmt}


# --- the table -------------------------------------------------------------------------------

def test_dicom_row_has_hounsfield_stats_and_shape(tmp_path):
    raw = np.arange(48 * 80, dtype=np.int16).reshape(48, 80) % 2000  # 48 rows x 80 columns
    store = LocalStore(tmp_path)
    store.put("ct.dcm", dicom_bytes(raw))
    row = build_table([manifest_row("ct.dcm", fmt="dicom")], store.get, progress=False).iloc[0]
    hu = raw.astype(np.float64) - 1024
    assert (row["width"], row["height"]) == (80, 48)
    assert row["mode"] == "int16"
    assert row["pixel_min"] == pytest.approx(-1024.0)
    assert row["pixel_max"] == pytest.approx(hu.max())
    assert row["pixel_mean"] == pytest.approx(hu.mean())
    assert row["pixel_std"] == pytest.approx(hu.std())
    assert pd.isna(row["decode_error"])


def test_raster_rows_have_gray_level_stats_and_shape(tmp_path):
    gray = np.tile(np.linspace(10, 250, 90), (70, 1))  # 70 rows x 90 columns
    rgb = np.zeros((64, 66, 3))
    rgb[..., 0] = 255  # pure red -> gray level 76 (ITU-R 601-2 luma)
    store = LocalStore(tmp_path)
    store.put("gray.png", png_bytes(gray))
    store.put("red.png", png_bytes(rgb, mode="RGB"))
    table = build_table([manifest_row("gray.png"), manifest_row("red.png")], store.get, progress=False)
    gray_row, red_row = table.iloc[0], table.iloc[1]
    assert (gray_row["width"], gray_row["height"], gray_row["mode"]) == (90, 70, "L")
    assert gray_row["pixel_min"] == 10 and gray_row["pixel_max"] == 250
    assert gray_row["pixel_mean"] == pytest.approx(gray.astype(np.uint8).mean())
    assert (red_row["width"], red_row["height"], red_row["mode"]) == (66, 64, "RGB")
    assert red_row["pixel_min"] == red_row["pixel_max"] == 76 and red_row["pixel_std"] == 0


def test_unreadable_images_are_reported_in_the_table_not_raised(tmp_path):
    store = LocalStore(tmp_path)
    store.put("junk.png", b"this is not an image")
    rows = [manifest_row("junk.png"), manifest_row("missing.png"), {**manifest_row("x"), "key": ""}]
    table = build_table(rows, store.get, progress=False)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert "not a PNG or JPEG" in table.loc[0, "decode_error"]
    assert "not found" in table.loc[1, "decode_error"]
    assert "no storage key" in table.loc[2, "decode_error"]
    assert table["width"].isna().all() and table["key"].isna().tolist() == [False, False, True]


def test_blank_manifest_cells_become_nulls(tmp_path):
    store = LocalStore(tmp_path)
    store.put("a.png", png_bytes(np.full((64, 64), 9)))
    row = build_table([{**manifest_row("a.png"), "label": "  ", "sha256": float("nan")}], store.get,
                      progress=False).iloc[0]
    assert row["label"] is None and row["sha256"] is None and row["width"] == 64


# --- suite parameters ------------------------------------------------------------------------

def test_share_bounds_round_towards_the_allowed_side():
    assert share_bounds(100, 0.05, 0.70) == (5, 70)
    assert share_bounds(100, 0.07, 0.57) == (7, 57)  # 0.07*100 = 7.000000000000001, 0.57*100 = 56.99999999999999
    assert share_bounds(22, 0.05, 0.70) == (2, 15)


def test_expanded_suite_has_one_share_check_per_class_and_every_parameter_filled():
    suite = expand_suite(load_declared_suite(SUITE_FILE), CLASSES, share_wording(20, 0.05, 0.7))
    shares = [e for e in suite["expectations"] if e.get("meta", {}).get("check") == "class_share"]
    assert [e["meta"]["class"] for e in shares] == CLASSES
    assert [e["kwargs"]["row_condition"]["parameter"] for e in shares] == CLASSES
    assert shares[3]["description"] == "images of class 'Stone' must number 1 to 14 of 20 (share 0.05 to 0.7)"
    text = str(suite["expectations"])
    assert not re.search(r"\{[a-z_]+\}", text), "a placeholder was left unfilled"
    referenced = set(re.findall(r"'\$PARAMETER': '([^']+)'", text))
    assert referenced == set(suite_parameters(CLASSES, 20, 64, 4096, 0.05, 0.7))


# --- the suite on tables ---------------------------------------------------------------------

def good_table(per_class: dict[str, int] | None = None) -> pd.DataFrame:
    """A table as build_table makes it: 5 valid 224x224 images per class unless told otherwise."""
    counts = per_class or {name: 5 for name in CLASSES}
    labels = [name for name, count in counts.items() for _ in range(count)]
    n = len(labels)
    return pd.DataFrame({
        "key": [f"img/{i}.png" for i in range(n)], "sha256": [f"{i:064x}" for i in range(n)],
        "source": [f"export/{i}.png" for i in range(n)], "label": labels, "group": "g", "series": "s",
        "format": "png", "width": pd.array([224] * n, dtype="Int64"),
        "height": pd.array([224] * n, dtype="Int64"), "mode": "L", "pixel_min": 0.0, "pixel_max": 255.0,
        "pixel_mean": 100.0, "pixel_std": 30.0, "decode_error": None,
    }, columns=list(TABLE_COLUMNS))


def check(table: pd.DataFrame) -> tuple[bool, list[dict]]:
    wording = share_wording(len(table), LIMITS.min_share, LIMITS.max_share)
    suite = expand_suite(load_declared_suite(SUITE_FILE), CLASSES, wording)
    values = suite_parameters(CLASSES, len(table), 64, 4096, LIMITS.min_share, LIMITS.max_share)
    outcome = run_suite(table, suite, values)
    return outcome.success, summarise(outcome.results, table, LIMITS)


def failed(entries: list[dict]) -> dict[tuple[str, str | None], str]:
    return {(e["expectation"], e["column"] or e.get("class")): e["problem"] for e in entries if not e["success"]}


def test_good_table_passes_every_expectation():
    success, entries = check(good_table())
    assert success and failed(entries) == {}
    assert len(entries) == 12 + len(CLASSES)
    share = next(e for e in entries if e.get("class") == "Stone")
    assert share["observed"] == {"images": 5, "share": 0.25} and share["expected"]["images"] == [1, 14]


def _label_outside(t):
    t.loc[0, "label"] = "Kidney"


def _duplicate_sha(t):
    t.loc[[1, 2], "sha256"] = t.loc[0, "sha256"]


def _too_small(t):
    t.loc[3, "width"] = 32


def _null_label(t):
    t.loc[5, "label"] = None


def _undecodable(t):
    t.loc[6, ["width", "height", "decode_error"]] = [pd.NA, pd.NA, "not a PNG or JPEG image"]


@pytest.mark.parametrize("damage, expected", [
    (_label_outside, {("expect_column_values_to_be_in_set", "label"):
                      "1 image labelled outside the classes [Normal, Cyst, Tumor, Stone]: 'Kidney' (1)"}),
    (_duplicate_sha, {("expect_column_values_to_be_unique", "sha256"):
                      "1 duplicate sha256 value(s), shared by 3 images: 000000000000... in img/0.png, img/1.png, "
                      "img/2.png"}),
    (_too_small, {("expect_column_values_to_be_between", "width"):
                  "1 image with width outside [64, 4096]: img/3.png (32)"}),
    (_null_label, {("expect_column_values_to_not_be_null", "label"):
                   "1 null value(s) in column 'label' (rows: img/5.png)"}),
    (_undecodable, {
        ("expect_column_values_to_be_null", "decode_error"):
            "1 image could not be read or decoded: img/6.png (not a PNG or JPEG image)",
        ("expect_column_values_to_not_be_null", "width"): "1 null value(s) in column 'width'",
        ("expect_column_values_to_not_be_null", "height"): "1 null value(s) in column 'height'"}),
], ids=["label-outside-classes", "duplicate-sha256", "too-small", "null-label", "undecodable"])
def test_damaged_table_fails_naming_the_expectation(damage, expected):
    table = good_table()
    damage(table)
    success, entries = check(table)
    problems = failed(entries)
    assert not success
    assert set(problems) == set(expected)
    for name, words in expected.items():
        assert problems[name].startswith(words), problems[name]


def test_missing_class_fails_presence_and_share():
    success, entries = check(good_table({"Normal": 5, "Cyst": 5, "Tumor": 5, "Stone": 0}))
    problems = failed(entries)
    assert not success
    assert problems == {
        ("expect_column_distinct_values_to_contain_set", "label"): "no images of class 'Stone'",
        ("expect_table_row_count_to_be_between", "Stone"):
            "class share of 'Stone' is 0.00 (0 of 15 images), below the minimum 0.05",
    }


@pytest.mark.parametrize("counts, words", [
    ({"Normal": 10, "Cyst": 10, "Tumor": 9, "Stone": 1}, "class share of 'Stone' is 0.03 (1 of 30 images), "
                                                         "below the minimum 0.05"),
    ({"Normal": 16, "Cyst": 2, "Tumor": 2, "Stone": 2}, "class share of 'Normal' is 0.73 (16 of 22 images), "
                                                        "above the maximum 0.70"),
], ids=["below-min", "above-max"])
def test_class_share_out_of_bounds_fails(counts, words):
    success, entries = check(good_table(counts))
    assert not success
    assert list(failed(entries).values()) == [words]


def test_a_broken_suite_file_is_refused_with_its_name(tmp_path):
    bad_json = tmp_path / "suite.json"
    bad_json.write_text("{not json")
    with pytest.raises(SuiteError, match="cannot read the expectation suite .*suite.json"):
        load_declared_suite(bad_json)
    unknown = {"name": "s", "expectations": [{"type": "expect_images_to_be_pretty", "kwargs": {}}]}
    with pytest.raises(SuiteError, match=r"expectation #1 \(expect_images_to_be_pretty\) of the suite 's' is not valid"):
        run_suite(good_table(), unknown, {})
