"""The packaged Bento served by `bentoml serve`, answering real HTTP requests on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components.common.imaging import decode_image, prepare_for_model
from components.common.procs import stop_process_group
from tests.fixtures import ct_dicom_bytes, png_bytes
from tests.package_support import CLASSES, register_tiny_model, run_package, write_project, write_validation_slices

READY_TIMEOUT_S = 120
TOKEN = "test-token-123"
POOLING = "max"  # not the default: the service must take it from the model, not assume it
# The study model the tiny champion is registered with (its `study_model` tag): a class is in a study's set when
# its pooled probability is at least 1 - threshold; the slice sets are tighter. The service must read both.
SET_THRESHOLD, SLICE_SET_THRESHOLD = 0.78, 0.5


def tiny_study_model() -> str:
    from components.common.conformal import ConformalCalibration
    from components.common.study_model import StudyModel

    study = StudyModel(POOLING, conformal=ConformalCalibration("lac", 0.9, False, (SET_THRESHOLD,) * 4, (40,) * 4),
                       slice_conformal=ConformalCalibration("lac", 0.8, False, (SLICE_SET_THRESHOLD,) * 4, (200,) * 4))
    return json.dumps(study.to_dict())
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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


def serve_tiny_champion(root: Path):
    """Register + package a tiny champion under `root`, serve its Bento, yield (url, bento.json, root); always stops
    the server. The session's `served` fixture (tests/pipeline/conftest.py), for this file and test_page_browser."""
    write_project(root, register_tiny_model(root, extra_tags={"series_pooling": POOLING,
                                                              "study_model": tiny_study_model()}))
    write_validation_slices(root)  # package converts the champion to OpenVINO and checks it on these
    packaged = run_package(root)
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    record = json.loads((root / "reports/package/bento.json").read_text())
    url, log = f"http://127.0.0.1:{free_port()}", root / "serve.log"
    env = {**os.environ, "BENTOML_HOME": str(root / ".bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "KIDNEY_CT_API_TOKEN": TOKEN, "KIDNEY_CT_MAX_PIXELS": str(1024 * 1024)}
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
        stop_process_group(server)


def predict(url: str, name: str, data: bytes, route: str = "predict", headers: dict | None = None) -> requests.Response:
    return requests.post(f"{url}/{route}", files={"image": (name, data)}, timeout=30,
                         headers=AUTH if headers is None else headers)


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
    in_set = [CLASSES[k] for k in np.argsort(-probs, kind="stable") if probs[k] >= 1 - SLICE_SET_THRESHOLD]
    assert body["prediction_set"] == (in_set or [body["label"]]) and body["coverage"] == 0.8  # the slice calibration
    assert body["refer"] == (len(body["prediction_set"]) > 1)


def test_the_champion_is_served_by_its_checked_openvino_form(served):
    _, record, root = served
    check = record["runtime_check"]
    assert record["runtime"] == "openvino" and check["passed"] and check["precision"] == "f32"
    assert check["slices"] == 24 and check["series"] == 6 and check["series_agreement"] == 1.0
    assert check["max_probability_diff"] <= check["max_allowed_diff"] == 1e-3
    model_dir = root / ".bentoml/models" / record["bento_model_tag"].replace(":", "/")
    assert (model_dir / "openvino" / "model.xml").is_file() and (model_dir / "model.keras").is_file()


def test_the_service_reports_the_version_it_serves(served):
    url, record, _ = served
    response = requests.post(f"{url}/version", json={}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"mlflow_model": record["mlflow_model_name"],
                               "mlflow_version": record["mlflow_model_version"],
                               "bento_model": record["bento_model_tag"], "runtime": record["runtime"],
                               "precision": record["runtime_check"]["precision"]}  # the converted form's: f32 here


def test_garbage_gets_a_readable_400_and_the_service_keeps_serving(served):
    url, _, _ = served
    bad = predict(url, "notes.txt", b"this is not an image" * 20)
    assert 400 <= bad.status_code < 500
    assert "PNG, JPEG or DICOM" in bad.text
    assert predict(url, "slice.png", png_slice()).status_code == 200
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


def truncated_png() -> bytes:
    return png_slice()[:300]


def dicom_without_pixels() -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_slice()))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def huge_png() -> bytes:
    return png_bytes(np.zeros((1100, 1100), np.uint8))  # 1.21 M pixels > KIDNEY_CT_MAX_PIXELS (1 M)


@pytest.mark.parametrize("name, make, status, words", [
    ("notes.txt", lambda: b"this is not an image" * 20, 400, "not a PNG or JPEG image"),
    ("cut.png", truncated_png, 400, "damaged or truncated"),
    ("empty.dcm", dicom_without_pixels, 400, "DICOM file has no pixel data"),
    ("huge.png", huge_png, 413, "at most 1048576 pixels"),
])
def test_each_bad_input_gets_its_own_4xx_and_message_then_a_good_request_works(served, name, make, status, words):
    url, _, _ = served
    for route in ("predict", "explain"):
        bad = predict(url, name, make(), route)
        assert bad.status_code == status, bad.text
        assert words in bad.text
    assert predict(url, "slice.png", png_slice()).status_code == 200


def test_without_the_bearer_token_the_service_says_401(served):
    url, _, _ = served
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = predict(url, "slice.png", png_slice(), headers=headers)
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.text
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 200  # probes need no token


def test_explain_and_preview_return_pngs_of_the_model_input_size(served):
    import io

    from PIL import Image

    url, record, _ = served
    for route, mode in (("explain", "RGB"), ("preview", "L")):
        response = predict(url, "slice.dcm", dicom_slice(), route)
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/png")
        image = Image.open(io.BytesIO(response.content))
        assert image.mode == mode and image.size == (record["image_size"], record["image_size"])


def test_page_and_prometheus_metrics_are_served(served):
    url, _, _ = served
    page = requests.get(f"{url}/ui/", timeout=5)
    assert page.status_code == 200 and "Decision support only" in page.text
    assert "bentoml_service_request" in requests.get(f"{url}/metrics", timeout=5).text


def batch_histogram(url: str) -> tuple[float, float, float]:
    """(uploads, batches, batches of one) that kidney_ct_predict_batch_size on /metrics has counted."""
    from prometheus_client.parser import text_string_to_metric_families

    requests_seen = batches = singles = 0.0
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=5).text):
        if family.name != "kidney_ct_predict_batch_size":
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                requests_seen += sample.value
            elif sample.name.endswith("_count"):
                batches += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 1.0:
                singles += sample.value
    return requests_seen, batches, singles


def test_concurrent_requests_share_batches_a_bad_file_among_them_gets_its_own_400(served):
    from concurrent.futures import ThreadPoolExecutor

    url, record, root = served
    payloads = [png_bytes(np.random.default_rng(i).integers(0, 256, (64, 64))) for i in range(16)]
    sent = payloads[:8] + [b"this is not an image" * 20] + payloads[8:]
    before = batch_histogram(url)
    with ThreadPoolExecutor(len(sent)) as pool:
        answers = list(pool.map(lambda data: predict(url, "s.png", data), sent))
    after = batch_histogram(url)
    assert answers[8].status_code == 400 and "PNG, JPEG or DICOM" in answers[8].text
    answers = answers[:8] + answers[9:]
    assert [a.status_code for a in answers] == [200] * len(payloads)
    for data, answer in zip(payloads, answers):  # batching must not mix up whose answer is whose
        expected = expected_probabilities(root, record, data)
        np.testing.assert_allclose([answer.json()["probabilities"][c] for c in CLASSES], expected, atol=1e-5)
    requests_batched, batches, singles = (a - b for a, b in zip(after, before))
    assert requests_batched == len(payloads)  # each good upload reached the model once; the bad one never did
    assert singles < batches < len(payloads), (requests_batched, batches, singles)  # some batches held several


def predict_series(url: str, files: list[tuple[str, bytes]], **params) -> requests.Response:
    return requests.post(f"{url}/predict_series", files=[("images", f) for f in files], data=params, timeout=60,
                         headers=AUTH)


def series_files() -> list[tuple[str, bytes]]:
    slices = [(f"s{i}.png", png_bytes(np.random.default_rng(10 + i).integers(0, 256, (64, 64)))) for i in range(4)]
    return slices + [("s4.dcm", dicom_slice())]


def test_a_whole_series_gets_the_pooled_verdict_its_top_slices_and_their_gradcam(served):
    import base64
    import io

    from PIL import Image

    from components.common.pooling import pool

    url, record, root = served
    files = series_files()
    response = predict_series(url, files + [("notes.txt", b"not an image" * 20)], top_k=2)
    assert response.status_code == 200, response.text
    body = response.json()
    slice_probs = np.array([expected_probabilities(root, record, data) for _, data in files])
    pooled = pool(slice_probs, POOLING)  # the pooling the model was certified with (its registry tag, its Bento)
    np.testing.assert_allclose([body["probabilities"][c] for c in CLASSES], pooled, atol=1e-5)
    assert body["label"] == CLASSES[int(pooled.argmax())] and body["slices"] == 5 and body["pooling"] == POOLING
    k = CLASSES.index(body["label"])
    assert [s["index"] for s in body["top_slices"]] == list(np.argsort(-slice_probs[:, k], kind="stable")[:2])
    assert body["skipped"] == [{"name": "notes.txt", "reason": "not a PNG or JPEG image"}]
    assert body["series_uids"] == [] and body["model_version"] == record["mlflow_model_version"]  # fixture: no UID
    in_set = [c for c in np.array(CLASSES)[np.argsort(-pooled, kind="stable")] if pooled[CLASSES.index(c)]
              >= 1 - SET_THRESHOLD]  # the packaged conformal calibration, applied to the pooled verdict
    assert body["prediction_set"] == (in_set or [body["label"]]) and body["coverage"] == 0.9
    assert body["refer"] == (len(body["prediction_set"]) > 1)
    for evidence in body["top_slices"]:
        assert evidence["verdict_probability"] == pytest.approx(slice_probs[evidence["index"], k], abs=1e-5)
        for field, mode in (("slice_png", "L"), ("gradcam_png", "RGB")):
            image = Image.open(io.BytesIO(base64.b64decode(evidence[field])))
            assert image.mode == mode and image.size == (record["image_size"], record["image_size"])


def test_a_zip_of_the_series_gets_the_same_verdict_and_nothing_readable_is_a_400(served):
    import io
    import zipfile

    url, _, _ = served
    files = series_files()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            archive.writestr(f"series/{name}", data)
        archive.writestr("__MACOSX/series/._s0.png", b"resource fork")
    zipped = predict_series(url, [("series.zip", buffer.getvalue())])
    plain = predict_series(url, files)
    assert zipped.status_code == plain.status_code == 200, zipped.text
    assert zipped.json()["probabilities"] == pytest.approx(plain.json()["probabilities"], abs=1e-6)
    assert zipped.json()["slices"] == 5 and zipped.json()["skipped"] == []
    bad = predict_series(url, [("a.txt", b"text" * 50), ("cut.png", truncated_png())])
    assert bad.status_code == 400 and "no readable slice in the series" in bad.text and "damaged" in bad.text
    assert predict_series(url, [("broken.zip", b"PK\x03\x04 not a zip")]).status_code == 400
    assert predict_series(url, files, top_k=0).status_code == 400
    unauthorised = requests.post(f"{url}/predict_series", files=[("images", f) for f in files], timeout=30)
    assert unauthorised.status_code == 401


def test_sr_true_returns_the_verdict_as_a_dicom_sr_filed_with_the_uploaded_study(served):
    import base64
    import io

    import pydicom

    from components.common.params import GenerateParams
    from components.generate.core import dicom_bytes, generate_export
    from tests.sr_support import by_name, evidence_instances

    url, record, _ = served
    settings = GenerateParams(seed=4, patients_per_class=1, slices_per_patient=3, matrix=64)
    series = [item.dataset for item in generate_export(settings, CLASSES) if item.label == "Tumor"]
    files = [(f"{ds.SOPInstanceUID}.dcm", dicom_bytes(ds)) for ds in series]
    response = predict_series(url, files, top_k=2, sr="true")
    assert response.status_code == 200, response.text
    body = response.json()
    sr = pydicom.dcmread(io.BytesIO(base64.b64decode(body["structured_report"])))
    items = by_name(sr)
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID and sr.PatientID == series[0].PatientID
    assert evidence_instances(sr) == {str(ds.SOPInstanceUID) for ds in series}
    assert items["Finding"][0][2] in {"Normal", "Cyst", "Neoplasm", "Kidney stone"}
    for label in CLASSES:
        assert items[f"Probability of {label}"] == [pytest.approx(body["probabilities"][label], abs=1e-6)]
    assert items["Source of Measurement"] == [s["name"].removesuffix(".dcm") for s in body["top_slices"]]
    assert items["Algorithm Version"] == [record["mlflow_model_version"]]
    assert items["Decision support notice"][0].startswith("INVESTIGATIONAL")  # KIDNEY_CT_CLINICAL_USE unset
    assert predict_series(url, files).json()["structured_report"] is None  # only when asked

    refused = predict_series(url, series_files(), sr="true")
    assert refused.status_code == 400 and "PNG/JPEG slices cannot get one" in refused.text
