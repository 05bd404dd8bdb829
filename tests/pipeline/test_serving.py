"""The packaged Bento served by `bentoml serve`, answering real HTTP requests on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components.common.imaging import decode_image, prepare_for_model
from tests.fixtures import ct_dicom_bytes, png_bytes
from tests.package_support import CLASSES, register_tiny_model, run_package, write_project

READY_TIMEOUT_S = 120


def png_slice() -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64)))


def dicom_slice() -> bytes:
    """A 64x64 CT DICOM (int16 + rescale intercept -1024): a soft-tissue disc in air."""
    disc = np.hypot(*np.mgrid[-1:1:64j, -1:1:64j]) < 0.6
    return ct_dicom_bytes(np.where(disc, 1064, 24))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"bentoml serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still busy loading
            pass
        time.sleep(0.5)
    pytest.fail(f"service not ready after {READY_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Register + package a tiny champion, serve its Bento; always stops the server."""
    root = tmp_path_factory.mktemp("serving")
    write_project(root, register_tiny_model(root))
    packaged = run_package(root)
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    record = json.loads((root / "reports/package/bento.json").read_text())
    url, log = f"http://127.0.0.1:{free_port()}", root / "serve.log"
    env = {**os.environ, "BENTOML_HOME": str(root / ".bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("KIDNEY_CT_BENTO_MODEL", None)
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("bentoml")), "serve", record["bento_tag"],
             "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(url, server, log)
        yield url, record, root
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def predict(url: str, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": (name, data)}, timeout=30)


def expected_probabilities(root: Path, record: dict, data: bytes) -> np.ndarray:
    """What the packaged model says for these bytes when given the shared prepare_for_model."""
    import keras

    name, version = record["bento_model_tag"].split(":")
    model = keras.saving.load_model(root / ".bentoml/models" / name / version / "model.keras", compile=False)
    pixels = prepare_for_model(decode_image(data), record["image_size"], record["window_center"],
                               record["window_width"]).astype(np.float32)
    return np.asarray(model(pixels[None, ..., None], training=False))[0]


@pytest.mark.parametrize("name, make", [("slice.png", png_slice), ("slice.dcm", dicom_slice)])
def test_predict_returns_the_champions_probabilities(served, name, make):
    url, record, root = served
    response = predict(url, name, make())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in CLASSES and body["model_version"] == record["mlflow_model_version"]
    probs = np.array([body["probabilities"][c] for c in CLASSES])
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert body["label"] == CLASSES[int(probs.argmax())]
    np.testing.assert_allclose(probs, expected_probabilities(root, record, make()), atol=1e-5)


def test_garbage_gets_a_readable_400_and_the_service_keeps_serving(served):
    url, _, _ = served
    bad = predict(url, "notes.txt", b"this is not an image" * 20)
    assert 400 <= bad.status_code < 500
    assert "PNG, JPEG or DICOM" in bad.text
    assert predict(url, "slice.png", png_slice()).status_code == 200
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
