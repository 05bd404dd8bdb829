"""`python -m components.generate` and `python -m components.ingest` end to end, through main()."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from components.generate.__main__ import main as generate_main
from components.ingest.__main__ import main as ingest_main

REPO = Path(__file__).resolve().parents[2]
KIDNEY_CT = REPO.parent / "shared" / "data" / "kidney-ct"
TINY_FILES = 16  # 4 classes x 2 patients x 2 slices


def write_params(tmp_path: Path, source: Path | None = None, store: str | None = None,
                 endpoint_url: str | None = None) -> str:
    """A params.yaml in tmp_path: the project's params with paths (and a tiny export) under tmp_path."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["paths"].update(generated_export=str(tmp_path / "export"), source=str(source or tmp_path / "export"),
                        store=store or str(tmp_path / "store"), ingested=str(tmp_path / "ingested"))
    raw["generate"].update(seed=3, patients_per_class=2, slices_per_patient=2, matrix=64)
    raw["storage"]["endpoint_url"] = endpoint_url
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def snapshot(folder: Path) -> dict[str, tuple[str, int, int]]:
    """relative path -> (sha256, size, mtime_ns) of every file."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size,
                                               p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("KIDNEY_CT_SALT", "pipeline-test-salt")


def test_generate_then_ingest_writes_manifest_quarantine_and_metrics(tmp_path, capsys):
    params = write_params(tmp_path)
    assert generate_main(["--params", params]) == 0
    assert len(list((tmp_path / "export").rglob("*.dcm"))) == TINY_FILES
    assert ingest_main(["--params", params]) == 0
    manifest = read_csv(tmp_path / "ingested" / "manifest.csv")
    assert len(manifest) == TINY_FILES
    assert list(manifest[0]) == ["key", "sha256", "source", "label", "group", "series", "format"]
    assert (tmp_path / "store" / "manifest.csv").read_bytes() == (tmp_path / "ingested" / "manifest.csv").read_bytes()
    assert read_csv(tmp_path / "ingested" / "quarantine.csv") == []
    metrics = json.loads((tmp_path / "ingested" / "ingest.json").read_text())
    assert metrics["files_seen"] == metrics["ingested_new"] == TINY_FILES and metrics["salt"] == "env"
    assert metrics["per_class"] == {"Normal": 4, "Cyst": 4, "Tumor": 4, "Stone": 4}
    assert metrics["store"] == str(tmp_path / "store")
    assert metrics["deidentification"]["table"] == "PS3.15 Table E.1-1 2026c"
    assert "16 files seen" in capsys.readouterr().out


def test_generate_rerun_is_byte_identical_and_refuses_a_folder_it_did_not_write(tmp_path, caplog):
    params = write_params(tmp_path)
    assert generate_main(["--params", params]) == 0
    first = {path: sha for path, (sha, _, _) in snapshot(tmp_path / "export").items()}
    assert generate_main(["--params", params]) == 0
    assert {path: sha for path, (sha, _, _) in snapshot(tmp_path / "export").items()} == first
    (tmp_path / "export" / "Normal" / "mine.dcm").write_bytes(b"a real export file")
    assert generate_main(["--params", params]) == 2
    assert "refusing to replace" in caplog.text and (tmp_path / "export" / "Normal" / "mine.dcm").exists()


def test_ingest_never_changes_the_source_and_reruns_are_idempotent(tmp_path, tiny_export):
    (tmp_path / "export" / "Cyst" / "broken.dcm").write_bytes(b"\x00" * 10)
    (tmp_path / "export" / "Polyp").mkdir()
    (tmp_path / "export" / "Polyp" / "x.dcm").write_bytes(next((tiny_export / "Cyst").rglob("*.dcm")).read_bytes())
    (tmp_path / "export" / "DICOMDIR").write_bytes(b"index")
    before = snapshot(tiny_export)
    params = write_params(tmp_path)
    assert ingest_main(["--params", params]) == 0
    assert ingest_main(["--params", params]) == 0
    assert snapshot(tiny_export) == before
    metrics = json.loads((tmp_path / "ingested" / "ingest.json").read_text())
    assert metrics["ingested_new"] == 0 and metrics["already_present"] == TINY_FILES and metrics["quarantined"] == 3
    reasons = {row["source"]: row["reason"] for row in read_csv(tmp_path / "ingested" / "quarantine.csv")}
    assert reasons["Polyp/x.dcm"].startswith("unknown label folder 'Polyp'")
    assert reasons["DICOMDIR"].startswith("no label folder")
    assert reasons["Cyst/broken.dcm"].startswith("not a DICOM Part 10 file")
    assert set(reasons) == {"Cyst/broken.dcm", "Polyp/x.dcm", "DICOMDIR"}


def test_a_real_export_without_a_salt_is_refused_the_generated_default_is_not(tmp_path, tiny_export, caplog,
                                                                            monkeypatch):
    monkeypatch.delenv("KIDNEY_CT_SALT")
    assert ingest_main(["--params", write_params(tmp_path)]) == 0  # the generated default: a public salt is fine
    assert json.loads((tmp_path / "ingested" / "ingest.json").read_text())["salt"] == "default"
    real = tmp_path / "real"
    shutil.copytree(tiny_export, real)
    assert ingest_main(["--params", write_params(tmp_path, source=real)]) == 2
    assert "KIDNEY_CT_SALT is not set: a real export needs a secret salt" in caplog.text
    (tiny_export / "Normal" / "from-the-pacs.dcm").write_bytes((real / "Normal").rglob("*.dcm").__next__().read_bytes())
    caplog.clear()
    assert ingest_main(["--params", write_params(tmp_path)]) == 2  # a file generate did not write: real data
    assert "KIDNEY_CT_SALT is not set" in caplog.text


def test_missing_source_fails_clearly_and_writes_nothing(tmp_path, caplog):
    assert ingest_main(["--params", write_params(tmp_path, source=tmp_path / "nowhere")]) == 2
    assert "does not exist" in caplog.text
    assert not (tmp_path / "ingested").exists() and not (tmp_path / "store").exists()


def test_store_inside_the_source_is_refused(tmp_path, tiny_export, caplog):
    before = snapshot(tiny_export)
    assert ingest_main(["--params", write_params(tmp_path, store=str(tiny_export / "store"))]) == 2
    assert "lies inside the source folder" in caplog.text and snapshot(tiny_export) == before


def test_empty_export_fails_clearly_and_writes_nothing(tmp_path, caplog):
    (tmp_path / "export" / "Normal").mkdir(parents=True)
    assert ingest_main(["--params", write_params(tmp_path)]) == 2
    assert "holds no files" in caplog.text
    assert not (tmp_path / "ingested").exists() and not (tmp_path / "store").exists()


def test_export_with_no_usable_image_fails_but_lists_the_reasons(tmp_path, caplog):
    (tmp_path / "export" / "Normal").mkdir(parents=True)
    (tmp_path / "export" / "Normal" / "readme.txt").write_text("not an image")
    assert ingest_main(["--params", write_params(tmp_path)]) == 2
    assert "no usable images" in caplog.text
    assert [row["source"] for row in read_csv(tmp_path / "ingested" / "quarantine.csv")] == ["Normal/readme.txt"]


@pytest.fixture
def moto_endpoint(monkeypatch):
    """A moto S3 server on 127.0.0.1 (random port) with dummy credentials."""
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_ingest_into_s3_through_the_endpoint_in_params(tmp_path, tiny_export, moto_endpoint):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bucket")
    params = write_params(tmp_path, store="s3://bucket/prefix", endpoint_url=moto_endpoint)
    assert ingest_main(["--params", params]) == 0
    keys = [item["Key"] for item in client.list_objects_v2(Bucket="bucket", Prefix="prefix/")["Contents"]]
    assert sum(key.startswith("prefix/images/") for key in keys) == TINY_FILES and "prefix/manifest.csv" in keys
    metrics = json.loads((tmp_path / "ingested" / "ingest.json").read_text())
    assert metrics["store"] == "s3://bucket/prefix" and metrics["ingested_new"] == TINY_FILES


def test_missing_bucket_fails_with_a_clear_message(tmp_path, tiny_export, moto_endpoint, caplog):
    params = write_params(tmp_path, store="s3://no-such-bucket/prefix", endpoint_url=moto_endpoint)
    assert ingest_main(["--params", params]) == 2
    assert "object store s3://no-such-bucket/prefix failed" in caplog.text and "NoSuchBucket" in caplog.text


@pytest.mark.slow
def test_ingest_the_shared_kidney_ct_dataset(tmp_path):
    if not KIDNEY_CT.is_dir():
        pytest.skip(f"{KIDNEY_CT} not found: the shared kidney-ct dataset is only present in the dev workspace")
    assert ingest_main(["--params", write_params(tmp_path, source=KIDNEY_CT)]) == 0
    manifest = read_csv(tmp_path / "ingested" / "manifest.csv")
    assert len(manifest) == 4612 and {row["format"] for row in manifest} == {"jpeg"}
    metrics = json.loads((tmp_path / "ingested" / "ingest.json").read_text())
    assert metrics["per_class"] == {"Normal": 2013, "Cyst": 1230, "Tumor": 859, "Stone": 510}
    assert metrics["quarantined"] == metrics["duplicates"] == 0
