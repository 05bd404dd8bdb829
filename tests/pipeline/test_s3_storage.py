"""The S3 path for real, against moto's S3 server on 127.0.0.1: stages read and write s3://, DVC's
remote round-trips there, and an endpoint that goes away mid-ingest is retried, reported and recovered.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import components.ingest.__main__ as ingest_cli
from components.generate.__main__ import main as generate_main
from components.ingest.__main__ import main as ingest_main
from components.preprocess.__main__ import main as preprocess_main
from components.validate.__main__ import main as validate_main
from tests.services import MotoS3, TcpProxy
from tests.tiny import tiny_params, write_params

REPO = Path(__file__).resolve().parents[2]
DVC = shutil.which("dvc", path=str(REPO / ".venv" / "bin")) or shutil.which("dvc")


@pytest.fixture
def s3(monkeypatch) -> Iterator[MotoS3]:
    """moto's S3 server with dummy credentials from the environment (the standard AWS chain)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "KIDNEY_CT_SALT": "s3-test-salt"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    server = MotoS3().start().reset()
    server.client().create_bucket(Bucket="kidney-ct")
    yield server
    server.stop()


def s3_params(tmp_path: Path, endpoint: str, **storage) -> Path:
    """Tiny params whose object store is s3://kidney-ct/store on the moto endpoint."""
    raw = tiny_params(tmp_path)
    raw["paths"]["store"] = "s3://kidney-ct/store"
    raw["storage"].update(endpoint_url=endpoint, **storage)
    return write_params(raw, tmp_path / "params.yaml")


def manifest_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_ingest_validate_preprocess_read_and_write_s3(tmp_path, s3):
    params = str(s3_params(tmp_path, s3.endpoint))
    for stage in (generate_main, ingest_main, validate_main, preprocess_main):
        assert stage(["--params", params]) == 0, stage.__module__

    raw = yaml.safe_load(Path(params).read_text())
    exported = len(list(Path(raw["paths"]["generated_export"]).rglob("*.dcm")))
    keys = s3.keys("kidney-ct", "store/")
    assert sum(key.startswith("store/images/") for key in keys) == exported == 4 * 3 * 4
    assert "store/manifest.csv" in keys
    stored_manifest = s3.client().get_object(Bucket="kidney-ct", Key="store/manifest.csv")["Body"].read()
    assert stored_manifest == (Path(raw["paths"]["ingested"]) / "manifest.csv").read_bytes()
    split = manifest_rows(Path(raw["paths"]["prepared"]) / "split.csv")
    assert len(split) == exported  # preprocess decoded every image it read back from S3


def test_dvc_push_and_pull_round_trip_through_the_s3_remote(tmp_path, s3):
    if DVC is None:
        pytest.skip("dvc is not installed in .venv")
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    payload = {"data/manifest.csv": b"key,label\nimages/a.dcm,Cyst\n", "data/arrays/X.npy": bytes(range(256)) * 40}
    for name, data in payload.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(data)
    s3.client().create_bucket(Bucket="dvc-remote")
    dvc = lambda *args: run(project, DVC, *args)  # noqa: E731
    run(project, "git", "init", "-q")
    dvc("init", "-q")
    dvc("remote", "add", "-d", "store", "s3://dvc-remote/cache")
    dvc("remote", "modify", "store", "endpointurl", s3.endpoint)
    dvc("add", "-q", "data")
    dvc("push", "-q")
    assert any(key.startswith("cache/files/md5/") for key in s3.keys("dvc-remote"))

    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    dvc("pull", "-q")
    assert {name: (project / name).read_bytes() for name in payload} == payload


def run(cwd: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_endpoint_outage_mid_ingest_fails_clearly_and_the_next_run_completes(tmp_path, s3, monkeypatch, caplog):
    endpoint = TcpProxy(target_port=s3.port).start()  # the S3 endpoint the stage sees; stop() = outage
    params = str(s3_params(tmp_path, endpoint.endpoint, retry_attempts=3))
    assert generate_main(["--params", params]) == 0
    open_store = ingest_cli.open_store

    def store_whose_endpoint_dies_after_five_objects(*args, **kwargs):
        # Triggered by stored objects, not files read: ingest reads files ahead for its worker processes.
        store = open_store(*args, **kwargs)
        put, stored = store.put, []

        def put_then_maybe_outage(key, data):
            put(key, data)
            stored.append(key)
            if len(stored) == 5:
                endpoint.stop()

        store.put = put_then_maybe_outage
        return store

    monkeypatch.setattr(ingest_cli, "open_store", store_whose_endpoint_dies_after_five_objects)
    assert ingest_main(["--params", params]) == 2
    assert "retry 1/2" in caplog.text and "retry 2/2" in caplog.text
    assert "endpoint unreachable after 3 attempts" in caplog.text
    assert "cannot write s3://kidney-ct/store/images/" in caplog.text  # stops at the first object it cannot store
    ingested = Path(yaml.safe_load(Path(params).read_text())["paths"]["ingested"])
    assert not (ingested / "manifest.csv").exists(), "a failed run must not publish a manifest"

    endpoint.start()  # same port, same objects: the endpoint comes back
    survived = set(s3.keys("kidney-ct", "store/images/"))
    assert len(survived) == 5  # the outage hit mid-run: what was stored before it stays
    monkeypatch.setattr(ingest_cli, "open_store", open_store)
    assert ingest_main(["--params", params]) == 0
    rows = manifest_rows(ingested / "manifest.csv")
    keys = s3.keys("kidney-ct", "store/images/")
    assert len(rows) == len(keys) == len(set(keys)) == 4 * 3 * 4  # nothing lost, nothing twice
    assert {"store/" + row["key"] for row in rows} == set(keys) and survived <= set(keys)
    for row in rows:  # each object is the complete de-identified file the manifest describes
        body = s3.client().get_object(Bucket="kidney-ct", Key="store/" + row["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == row["sha256"]
    endpoint.stop()
