"""The ingest core: de-identification, labels, quarantine, duplicates, idempotency, S3."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from components.common.imaging import decode_image
from components.common.params import GenerateParams, IngestParams, StorageParams
from components.common.storage import LocalStore, open_store
from components.generate.core import dicom_bytes, generate_export
from components.ingest.core import (
    MANIFEST_COLUMNS,
    ImageLimits,
    Rejection,
    SaltRequired,
    SourceFile,
    check_counts,
    ingest,
    merge_manifests,
    resolve_label,
    resolve_salt,
    rows_to_csv,
    summary,
)
from components.ingest.deid import deidentify, remaining_phi

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
SALT = "test-salt"
REQUIRED_PHI_REMOVED = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress", "InstitutionName",
    "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "AccessionNumber", "StudyID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_files() -> list[SourceFile]:
    """16 generated DICOM files (4 classes x 2 patients x 2 slices, 64x64) as in-memory source files."""
    settings = GenerateParams(seed=3, patients_per_class=2, slices_per_patient=2, matrix=64)
    return [SourceFile(item.path, dicom_bytes(item.dataset)) for item in generate_export(settings, CLASSES)]


def _dataset(files: list[SourceFile], index: int = 0) -> Dataset:
    return pydicom.dcmread(io.BytesIO(files[index].data))


def _with_every_phi_tag(ds: Dataset) -> Dataset:
    """The dataset plus every PHI attribute the brief lists, one nested in a sequence, and a private tag."""
    ds.OtherPatientIDs, ds.PatientAddress, ds.InstitutionAddress = "OTHER-1", "1 Main St", "2 Side St"
    ds.PerformingPhysicianName, ds.OperatorsName = "WHO^DR", "TECH^ONE"
    item = Dataset()
    item.AccessionNumber, item.ReferencedSOPInstanceUID = "ACC-NESTED", "1.2.3"
    ds.ReferencedStudySequence = Sequence([item])
    ds.add_new(0x00091010, "LO", "PRIVATE PATIENT NOTE")
    return ds


def _png(seed: int = 0, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(seed: int = 0, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="GIF")
    return buffer.getvalue()


def _dicom_without_pixels(files: list[SourceFile]) -> bytes:
    ds = _dataset(files)
    del ds.PixelData
    return dicom_bytes(ds)


# --- de-identification -----------------------------------------------------------------------------


def test_deidentify_removes_every_phi_tag_and_marks_the_dataset(tiny_files):
    original = _with_every_phi_tag(_dataset(tiny_files))
    assert set(REQUIRED_PHI_REMOVED) <= set(remaining_phi(original))
    clean = deidentify(original, SALT).dataset
    assert remaining_phi(clean) == []
    for keyword in REQUIRED_PHI_REMOVED:  # PS3.15: removed (X), emptied (Z), pseudonymised (D) or shifted
        value = str(clean.get(keyword, "") or "")
        assert value in ("", clean.PatientID) or keyword.endswith("Date"), keyword
        assert value != str(original.data_element(keyword).value), keyword
    assert "ReferencedStudySequence" not in clean  # removed with the accession number nested in it
    assert not any(element.tag.is_private for element in clean.iterall())
    assert clean.PatientIdentityRemoved == "YES" and clean.DeidentificationMethod
    assert original.PatientName, "the input dataset must not be modified"


def test_deidentify_replaces_uids_deterministically(tiny_files):
    original = _dataset(tiny_files)
    first, again = deidentify(original, SALT).dataset, deidentify(original, SALT).dataset
    other_salt = deidentify(original, "another-salt").dataset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        new = str(first.data_element(keyword).value)
        assert new != str(original.data_element(keyword).value)
        assert re.fullmatch(r"[0-9.]{1,64}", new) and new == str(again.data_element(keyword).value)
        assert new != str(other_salt.data_element(keyword).value)
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_group_key_is_a_stable_salted_hash_of_the_patient(tiny_files):
    same_patient = [deidentify(_dataset(tiny_files, i), SALT) for i in (0, 1)]  # two slices, one patient
    other_patient = deidentify(_dataset(tiny_files, 2), SALT)
    assert re.fullmatch(r"p-[0-9a-f]{16}", same_patient[0].group)
    assert same_patient[0].group == same_patient[1].group != other_patient.group
    assert same_patient[0].series == same_patient[1].series != other_patient.series
    assert deidentify(_dataset(tiny_files, 0), SALT).group == same_patient[0].group  # stable across runs
    assert deidentify(_dataset(tiny_files, 0), "another-salt").group != same_patient[0].group
    patient_id = str(_dataset(tiny_files).PatientID)
    assert patient_id not in same_patient[0].group


def test_group_falls_back_to_the_study_when_patient_id_is_missing(tiny_files):
    slices = [_dataset(tiny_files, i) for i in (0, 1)]
    for ds in slices:
        del ds.PatientID
    groups = {deidentify(ds, SALT).group for ds in slices}
    assert len(groups) == 1 and re.fullmatch(r"p-[0-9a-f]{16}", groups.pop())


def test_salt_comes_from_the_env_var_else_the_default_with_a_warning(caplog):
    settings = IngestParams(salt_env="MY_SALT", default_salt="fallback")
    assert resolve_salt(settings, {"MY_SALT": "secret"}) == ("secret", "env")
    with caplog.at_level(logging.WARNING, logger="kidney_ct"):
        assert resolve_salt(settings, {}) == ("fallback", "default")
    assert "MY_SALT is not set" in caplog.text


def test_a_real_export_without_a_salt_is_refused():
    settings = IngestParams(salt_env="MY_SALT", default_salt="fallback")
    assert resolve_salt(settings, {"MY_SALT": "secret"}, allow_default=False) == ("secret", "env")
    with pytest.raises(SaltRequired, match="MY_SALT is not set: a real export needs a secret salt"):
        resolve_salt(settings, {}, allow_default=False)


def _variant(files: list[SourceFile], **changes) -> bytes:
    ds = _dataset(files)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return dicom_bytes(ds)


def test_what_is_not_a_plain_ct_slice_is_quarantined_with_its_reason(tiny_files):
    from pydicom.uid import SecondaryCaptureImageStorage

    cases = {
        "Normal/burned.dcm": (dict(BurnedInAnnotation="YES"), "BurnedInAnnotation is YES"),
        "Normal/sc.dcm": (dict(SOPClassUID=SecondaryCaptureImageStorage), "secondary capture (Secondary Capture"),
        "Normal/screen.dcm": (dict(ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]), "ImageType says SCREEN SAVE"),
        "Normal/mr.dcm": (dict(Modality="MR"), "modality MR, not CT"),
        "Normal/nomod.dcm": (dict(Modality=""), "modality missing, not CT"),
        "Normal/rgb.dcm": (dict(PhotometricInterpretation="PALETTE COLOR"), "unsupported photometric interpretation"),
    }
    files = [SourceFile(path, _variant(tiny_files, **changes)) for path, (changes, _) in cases.items()]
    files += [SourceFile("Normal/tiny.png", _png(1, size=4)), SourceFile("Normal/huge.png", _png(2, size=80))]
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 4000, dtype=np.uint16)).save(buffer, format="PNG")
    files.append(SourceFile("Normal/deep.png", buffer.getvalue()))
    result = ingest(files, LocalStore(Path(tempfile.mkdtemp())), CLASSES, SALT, ImageLimits(8, 72))
    reasons = {row["source"]: row["reason"] for row in result.quarantine}
    for path, (_, reason) in cases.items():
        assert reasons[path].startswith(reason), (path, reasons[path])
    assert reasons["Normal/tiny.png"] == "image is 4x4 pixels: smaller than the minimum side of 8"
    assert reasons["Normal/huge.png"] == "image is 80x80 pixels: larger than the maximum side of 72"
    assert reasons["Normal/deep.png"].startswith("unsupported bit depth or colour mode 'I;16'")
    assert result.manifest == [] and result.counts["quarantined"] == len(files)


# --- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, label", [("Cyst/a.jpg", "Cyst"), ("cyst/x/y/a.dcm", "Cyst"), ("STONE/a.png", "Stone")])
def test_label_is_the_first_folder_exact_then_case_insensitive(path, label):
    assert resolve_label(path, CLASSES) == label


def test_exact_match_wins_over_case_insensitive():
    assert resolve_label("cyst/a.png", ["Cyst", "cyst", "Normal"]) == "cyst"


@pytest.mark.parametrize("path, reason", [
    ("Foo/a.jpg", "unknown label folder 'Foo' (expected one of Normal, Cyst, Tumor, Stone)"),
    ("a.jpg", "no label folder"),
])  # fmt: skip
def test_unknown_or_missing_label_folder_is_rejected(path, reason):
    with pytest.raises(Rejection, match=re.escape(reason)):
        resolve_label(path, CLASSES)


# --- ingest ----------------------------------------------------------------------------------------


def test_ingest_stores_deidentified_dicom_and_a_sorted_manifest(tiny_files, tmp_path):
    store = LocalStore(tmp_path / "store")
    result = ingest(tiny_files, store, CLASSES, SALT)
    assert result.counts == dict(files_seen=16, ingested_new=16, already_present=0, duplicates=0, quarantined=0)
    assert result.per_class(CLASSES) == {label: 4 for label in CLASSES}
    assert [row["key"] for row in result.manifest] == sorted(row["key"] for row in result.manifest)
    sources = {f.path: f.data for f in tiny_files}
    for row in result.manifest:
        assert tuple(row) == MANIFEST_COLUMNS
        stored = store.get(row["key"])
        assert hashlib.sha256(stored).hexdigest() == row["sha256"]
        source_sha = hashlib.sha256(sources[row["source"]]).hexdigest()
        assert row["key"] == f"images/{row['label']}/{source_sha[:20]}.dcm"
        assert row["source"].startswith(row["label"] + "/") and row["format"] == "dicom"
        assert re.fullmatch(r"p-[0-9a-f]{16}", row["group"]) and re.fullmatch(r"s-[0-9a-f]{16}", row["series"])
        assert remaining_phi(pydicom.dcmread(io.BytesIO(stored))) == []
        assert np.array_equal(decode_image(stored).pixels, decode_image(sources[row["source"]]).pixels)
    assert len({row["group"] for row in result.manifest}) == 8  # 4 classes x 2 patients


def test_second_run_uploads_nothing_and_gives_the_same_manifest(tiny_files, tmp_path):
    store = LocalStore(tmp_path / "store")
    first = ingest(tiny_files, store, CLASSES, SALT)
    second = ingest(tiny_files, store, CLASSES, SALT)
    assert second.counts == dict(files_seen=16, ingested_new=0, already_present=16, duplicates=0, quarantined=0)
    assert second.manifest == first.manifest


def test_rasters_are_stored_byte_for_byte_without_group(tmp_path):
    files = [SourceFile("Normal/a.png", _png(1)), SourceFile("Cyst/b.jpg", _jpeg(2))]
    store = LocalStore(tmp_path / "store")
    result = ingest(files, store, CLASSES, SALT)
    by_source = {row["source"]: row for row in result.manifest}
    assert by_source["Normal/a.png"]["format"] == "png" and by_source["Cyst/b.jpg"]["format"] == "jpeg"
    assert by_source["Cyst/b.jpg"]["key"].endswith(".jpg")
    for f in files:
        row = by_source[f.path]
        assert store.get(row["key"]) == f.data and row["group"] == row["series"] == ""
        assert row["sha256"] == hashlib.sha256(f.data).hexdigest()


def _quarantine_cases(tiny_files: list[SourceFile]) -> list[tuple[str, bytes, str]]:
    jpeg = _jpeg(3)
    return [
        ("Cyst/corrupt.dcm", b"\x07" * 600, "not a DICOM Part 10 file"),
        ("Cyst/truncated.dcm", tiny_files[0].data[: len(tiny_files[0].data) // 2], "pixel data cannot be decoded"),
        ("Cyst/random.jpg", bytes(np.random.default_rng(4).integers(0, 256, 300, dtype=np.uint8)), "not a PNG or JPEG"),
        ("Tumor/truncated.jpg", jpeg[: len(jpeg) // 2], "damaged or truncated"),
        ("Stone/no_pixels.dcm", _dicom_without_pixels(tiny_files), "no pixel data"),
        ("Normal/empty.png", b"", "file is empty"),
        ("Normal/notes.txt", b"patient felt fine\n", "not a PNG or JPEG image"),
        ("Normal/scan.gif", _gif(), "unsupported image format"),
        ("Foo/a.png", _png(5), "unknown label folder 'Foo' (expected one of Normal, Cyst, Tumor, Stone)"),
        ("top.png", _png(6), "no label folder"),
    ]


def test_each_bad_file_is_quarantined_with_its_reason(tiny_files, tmp_path):
    cases = _quarantine_cases(tiny_files)
    store = LocalStore(tmp_path / "store")
    result = ingest([SourceFile(path, data) for path, data, _ in cases], store, CLASSES, SALT)
    assert result.manifest == [] and result.counts["quarantined"] == len(cases) == result.counts["files_seen"]
    rows = {row["source"]: row for row in result.quarantine}
    for path, data, reason in cases:
        row = rows[path]
        assert reason in row["reason"], (path, row["reason"])
        name = path.rsplit("/", 1)[-1]
        assert row["key"] == f"quarantine/{hashlib.sha256(data).hexdigest()[:20]}/{name}"
        assert store.get(row["key"]) == data


def test_unreadable_file_is_quarantined_without_an_object(tmp_path):
    result = ingest([SourceFile("Cyst/locked.dcm", None, "file cannot be read (Permission denied)")],
                    LocalStore(tmp_path / "store"), CLASSES, SALT)
    reason = "file cannot be read (Permission denied)"
    assert result.quarantine == [dict(source="Cyst/locked.dcm", reason=reason, key="")]


def test_identical_bytes_keep_one_row_and_count_a_duplicate(tiny_files, tmp_path):
    png = _png(7)
    files = [*tiny_files[:3], SourceFile("Normal/a.png", png), SourceFile("Normal/sub/copy-of-a.png", png)]
    result = ingest(files, LocalStore(tmp_path / "store"), CLASSES, SALT)
    assert result.counts == dict(files_seen=5, ingested_new=4, already_present=0, duplicates=1, quarantined=0)
    assert [row["source"] for row in result.manifest].count("Normal/a.png") == 1
    assert "Normal/sub/copy-of-a.png" not in {row["source"] for row in result.manifest}


def _store_contents(store: LocalStore) -> dict[str, bytes]:
    return {key: store.get(key) for key in store.keys("")}


def test_identical_bytes_under_two_labels_quarantine_every_copy(tmp_path):
    png, other = _png(8), _png(9)
    files = [SourceFile("Cyst/a.png", png), SourceFile("Cyst/sub/copy.png", png),  # a duplicate until Tumor/a.png
             SourceFile("Normal/keep.png", other), SourceFile("Tumor/a.png", png)]
    store = LocalStore(tmp_path / "store")
    result = ingest(files, store, CLASSES, SALT)
    assert [row["source"] for row in result.manifest] == ["Normal/keep.png"]
    assert result.counts == dict(files_seen=4, ingested_new=1, already_present=0, duplicates=0, quarantined=3)
    assert result.conflicting_labels == 3 and result.withdrawn == ()
    reasons = {row["source"]: row["reason"] for row in result.quarantine}
    assert set(reasons) == {"Cyst/a.png", "Tumor/a.png", "Cyst/sub/copy.png"}
    for source, reason in reasons.items():
        assert reason.startswith("conflicting labels Cyst vs Tumor: the same bytes are also "), reason
        assert all(repr(path) in reason for path in reasons if path != source) and repr(source) not in reason
    digest = hashlib.sha256(png).hexdigest()[:20]
    assert f"its object images/Cyst/{digest}.png stays in the store" in reasons["Cyst/a.png"]
    for row in result.quarantine:  # every copy's raw bytes are kept for a person to look at
        assert row["key"] == f"quarantine/{digest}/{row['source'].rsplit('/', 1)[-1]}" and store.get(row["key"]) == png
    assert store.get(f"images/Cyst/{digest}.png") == png  # stored before the conflict showed up: left alone
    assert not store.exists(f"images/Tumor/{digest}.png")
    assert summary(result, CLASSES, store.uri, "env")["conflicting_labels"] == 3

    before = _store_contents(store)
    again = ingest(files, store, CLASSES, SALT)
    assert again.counts == dict(files_seen=4, ingested_new=0, already_present=1, duplicates=0, quarantined=3)
    assert (again.manifest, again.quarantine) == (result.manifest, result.quarantine)
    assert _store_contents(store) == before


def test_a_conflict_among_many_copies_names_a_few_and_counts_the_rest(tmp_path):
    png = _png(10)
    files = [SourceFile(f"{label}/{i}.png", png) for i, label in enumerate(["Cyst", "Tumor"] * 4)]
    result = ingest(files, LocalStore(tmp_path / "store"), CLASSES, SALT)
    assert result.manifest == [] and result.counts["quarantined"] == result.conflicting_labels == 8
    for row in result.quarantine:  # 5 of the 7 other copies named, quoted
        assert row["reason"].count("'") == 2 * 5 and " and 2 more; which label is right" in row["reason"], row


def test_bytes_of_an_earlier_run_arriving_under_another_label_quarantine_both(tmp_path):
    png = _png(11)
    store = LocalStore(tmp_path / "store")
    first = ingest([SourceFile("Cyst/a.png", png)], store, CLASSES, SALT)
    before = _store_contents(store)
    second = ingest([SourceFile("Tumor/b.png", png), SourceFile("Normal/new.png", _png(12))], store, CLASSES, SALT,
                    earlier=first.manifest)
    earlier_key = first.manifest[0]["key"]
    assert [row["source"] for row in second.manifest] == ["Normal/new.png"]
    assert second.counts == dict(files_seen=2, ingested_new=1, already_present=0, duplicates=0, quarantined=1)
    assert second.conflicting_labels == 1 and second.withdrawn == (earlier_key,)
    reasons = {row["source"]: row["reason"] for row in second.quarantine}
    assert reasons["Tumor/b.png"].startswith("conflicting labels Cyst vs Tumor: the same bytes are also "
                                             "'Cyst/a.png' (Cyst, an earlier run)")
    assert reasons["Cyst/a.png"].startswith("conflicting labels Cyst vs Tumor: the same bytes are also "
                                            "'Tumor/b.png' (Tumor)")
    assert f"ingested by an earlier run as {earlier_key}: the row leaves the manifest" in reasons["Cyst/a.png"]
    merged = merge_manifests(first.manifest, second.manifest, second.withdrawn)
    assert [row["source"] for row in merged] == ["Normal/new.png"]
    after = _store_contents(store)
    assert {key: after[key] for key in before} == before, "objects already in the store stay untouched"
    assert not any(key.startswith("images/Tumor/") for key in after)


def test_bytes_of_an_earlier_run_under_the_same_label_are_no_conflict(tmp_path):
    png = _png(13)
    store = LocalStore(tmp_path / "store")
    first = ingest([SourceFile("Cyst/a.png", png)], store, CLASSES, SALT)
    second = ingest([SourceFile("Cyst/a.png", png), SourceFile("Cyst/copy.png", png)], store, CLASSES, SALT,
                    earlier=first.manifest)
    assert second.counts == dict(files_seen=2, ingested_new=0, already_present=1, duplicates=1, quarantined=0)
    assert second.manifest == first.manifest and second.withdrawn == () and second.quarantine == []
    assert merge_manifests(first.manifest, second.manifest, second.withdrawn) == first.manifest


def test_counts_always_add_up(tiny_files, tmp_path):
    files = [*tiny_files, tiny_files[0], *(SourceFile(p, d) for p, d, _ in _quarantine_cases(tiny_files))]
    store = LocalStore(tmp_path / "store")
    ingest(tiny_files[:5], store, CLASSES, SALT)  # some objects already present
    counts = ingest(files, store, CLASSES, SALT).counts
    assert counts["already_present"] == 5 and counts["ingested_new"] == 11 and counts["duplicates"] == 1
    outcomes = ("ingested_new", "already_present", "duplicates", "quarantined")
    assert counts["files_seen"] == sum(counts[name] for name in outcomes)


def test_check_counts_refuses_counts_that_do_not_add_up():
    check_counts(dict(files_seen=3, ingested_new=1, already_present=1, duplicates=0, quarantined=1))
    with pytest.raises(AssertionError, match="do not add up"):
        check_counts(dict(files_seen=3, ingested_new=1, already_present=0, duplicates=0, quarantined=1))


def test_manifest_csv_has_the_columns_in_order():
    text = rows_to_csv([dict(zip(MANIFEST_COLUMNS, "abcdefg"))], MANIFEST_COLUMNS).decode()
    assert text == "key,sha256,source,label,group,series,format\na,b,c,d,e,f,g\n"


def test_ingest_into_s3_with_moto(tiny_files, monkeypatch):
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        store = open_store("s3://bucket/prefix", StorageParams())
        store.client.create_bucket(Bucket="bucket")
        first = ingest(tiny_files[:4], store, CLASSES, SALT)
        second = ingest(tiny_files[:4], store, CLASSES, SALT)
        listed = store.client.list_objects_v2(Bucket="bucket")["Contents"]
    assert first.counts["ingested_new"] == 4 and second.counts["already_present"] == 4
    assert sorted(item["Key"] for item in listed) == sorted(f"prefix/{row['key']}" for row in first.manifest)


def test_two_worker_processes_judge_every_file_as_one_does(tiny_files, tmp_path, monkeypatch):
    import components.ingest.core as core

    monkeypatch.setattr(core, "EXAMINE_CHUNK", 4)  # several chunks: the order must survive chunking
    files = [*tiny_files, *(SourceFile(path, data) for path, data, _ in _quarantine_cases(tiny_files)),
             SourceFile(tiny_files[1].path.rsplit("/", 1)[0] + "/copy.dcm", tiny_files[1].data),
             SourceFile("Stone/relabelled.dcm", tiny_files[2].data)]
    serial = ingest(files, LocalStore(tmp_path / "one"), CLASSES, SALT)
    parallel = ingest(iter(files), LocalStore(tmp_path / "two"), CLASSES, SALT, workers=2)
    assert parallel == serial and parallel.counts["files_seen"] == len(files)
    assert parallel.counts["quarantined"] >= 12 and parallel.counts["duplicates"] == 1
    assert parallel.conflicting_labels == 2
    assert sorted(LocalStore(tmp_path / "two").keys("")) == sorted(LocalStore(tmp_path / "one").keys(""))
