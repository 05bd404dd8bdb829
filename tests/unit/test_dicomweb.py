"""The DICOMweb pull: QIDO-RS parsing, what is new, labels, state, and the client against a fake PACS."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pydicom
import pytest
from pydicom.dataset import Dataset

from components.common.params import GenerateParams
from components.generate.core import dicom_bytes, generate_export
from components.ingest.core import merge_manifests
from components.ingest.dicomweb import label_of, new_studies, pulled_files, read_state, state_bytes, study_key
from components.lib.pacs import PacsClient, PacsError, SeriesRef, StudyRef, parse_series, parse_studies, retrying_session

CLASSES = ["Normal", "Cyst", "Tumor", "Stone"]
BOUNDARY = "kidney-b0undary"


def test_qido_answers_become_study_and_series_refs():
    studies = [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00201208": {"vr": "IS", "Value": [4]}},
               {"0020000D": {"vr": "UI", "Value": ["1.2.4"]}}, {"00100010": {"vr": "PN"}}]
    assert parse_studies(studies) == [StudyRef("1.2.3", 4), StudyRef("1.2.4", 0)]
    series = [{"0020000E": {"Value": ["9.2"]}, "00201209": {"Value": [3]}}, {"0020000E": {"Value": ["9.1"]}},
              {"00201209": {"Value": [1]}}]
    assert parse_series("1.2.3", series) == [SeriesRef("1.2.3", "9.1", 0), SeriesRef("1.2.3", "9.2", 3)]


def test_only_unseen_studies_or_studies_with_new_instances_are_pulled():
    listed = [StudyRef("1.1", 2), StudyRef("1.2", 3), StudyRef("1.3", 1)]
    state = {study_key("s", "1.1"): 2, study_key("s", "1.2"): 2}
    assert [study.uid for study in new_studies(listed, state, "s")] == ["1.2", "1.3"]
    assert new_studies(listed, state, "other-salt") == listed  # a new salt forgets the state


def test_state_round_trips_and_holds_no_uids():
    state = {study_key("s", "1.2.840.99"): 5}
    raw = state_bytes(state)
    assert read_state(raw) == state and b"1.2.840.99" not in raw and read_state(None) == {}
    with pytest.raises(PacsError, match="delete it"):
        read_state(b"{not json")


@pytest.mark.parametrize("text, label", [("CT ABDOMEN - CYST", "Cyst"), ("stone protocol", "Stone"),
                                         ("CT ABDOMEN", ""), ("Cyst and Tumor", ""), ("Cystic", "")])
def test_label_is_the_one_class_named_as_a_word(text, label):
    ds = Dataset()
    ds.StudyDescription = text
    assert label_of(ds, "StudyDescription", CLASSES) == label


def test_manifests_merge_by_key_without_duplicates():
    row = lambda key, label: {"key": key, "sha256": "x", "source": "s", "label": label, "group": "g",  # noqa: E731
                              "series": "r", "format": "dicom"}
    merged = merge_manifests([row("b", "Cyst"), row("a", "Normal")], [row("b", "Cyst"), row("c", "Stone")])
    assert [r["key"] for r in merged] == ["a", "b", "c"]
    assert json.dumps(merged)  # plain dicts


class FakePacs(BaseHTTPRequestHandler):
    """A DICOMweb root at /dicom-web: QIDO-RS studies/series with limit/offset, WADO-RS series as multipart."""

    series: dict[tuple[str, str], list[bytes]] = {}  # (study, series) -> DICOM files
    requests: list[str] = []
    fail_with: list[int] = []  # statuses answered (one per request) before the real answers

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        self.requests.append(url.path)
        if self.fail_with:
            return self._send(self.fail_with.pop(0), b"{}", "application/json")
        query = parse_qs(url.query)
        parts = url.path.removeprefix("/dicom-web/").split("/")
        if parts == ["studies"]:
            studies = sorted({study for study, _ in self.series})
            items = [{"0020000D": {"vr": "UI", "Value": [uid]}, "00201208": {"vr": "IS", "Value": [
                sum(len(files) for (st, _), files in self.series.items() if st == uid)]}} for uid in studies]
            return self._json(items, query)
        if len(parts) == 3 and parts[2] == "series":
            items = [{"0020000E": {"vr": "UI", "Value": [se]}, "00201209": {"vr": "IS", "Value": [len(files)]}}
                     for (st, se), files in sorted(self.series.items()) if st == parts[1]]
            return self._json(items, query)
        if len(parts) == 4 and (parts[1], parts[3]) in self.series:
            body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), data)
                            for data in self.series[(parts[1], parts[3])]) + b"--%s--\r\n" % BOUNDARY.encode()
            return self._send(200, body, f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        self._send(404, b'{"Details": "inexistent series: %s"}' % url.path.encode(), "application/json")

    def _json(self, items: list[dict], query: dict) -> None:
        offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["1000"])[0])
        self._send(200, json.dumps(items[offset:offset + limit]).encode(), "application/dicom+json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def ct_files(descriptions: list[str], study: str, series: str) -> list[bytes]:
    """Generated CT slices of one series, StudyDescription set to each of `descriptions`."""
    settings = GenerateParams(seed=3, patients_per_class=1, slices_per_patient=len(descriptions), matrix=64)
    files = []
    for index, (item, text) in enumerate(zip(generate_export(settings, ["Cyst"]), descriptions, strict=False)):
        item.dataset.StudyInstanceUID, item.dataset.SeriesInstanceUID = study, series
        item.dataset.SOPInstanceUID = f"{series}.{index + 1}"
        item.dataset.file_meta.MediaStorageSOPInstanceUID = item.dataset.SOPInstanceUID
        item.dataset.StudyDescription = text
        files.append(dicom_bytes(item.dataset))
    return files


@pytest.fixture
def pacs() -> Iterator[str]:
    FakePacs.series = {("1.1", "1.1.1"): ct_files(["CT - Cyst", "CT - Cyst", "CT"], "1.1", "1.1.1"),
                       ("1.1", "1.1.2"): ct_files(["CT - Stone"], "1.1", "1.1.2"),
                       ("1.2", "1.2.1"): ct_files(["CT - Tumor"] * 2, "1.2", "1.2.1"),
                       ("1.3", "1.3.1"): ct_files(["CT - Normal"], "1.3", "1.3.1")}
    FakePacs.requests, FakePacs.fail_with = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePacs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/dicom-web"
    server.shutdown()
    server.server_close()


def client_for(url: str, attempts: int = 1) -> PacsClient:
    return PacsClient(url, retrying_session("u", "p", attempts, 0), timeout_s=5, page_size=2)


def test_studies_are_listed_page_by_page(pacs):
    assert client_for(pacs).studies() == [StudyRef("1.1", 4), StudyRef("1.2", 2), StudyRef("1.3", 1)]
    assert FakePacs.requests == ["/dicom-web/studies"] * 3  # pages of 2, 1, then an empty one


def test_each_series_is_one_wado_request_and_unlabelled_instances_are_quarantined(pacs):
    client = client_for(pacs)
    pulled = list(pulled_files(client, [StudyRef("1.1", 4), StudyRef("1.2", 2)], CLASSES, "StudyDescription", "s"))
    wado = [path for path in FakePacs.requests if path.count("/") == 5]
    assert wado == ["/dicom-web/studies/1.1/series/1.1.1", "/dicom-web/studies/1.1/series/1.1.2",
                    "/dicom-web/studies/1.2/series/1.2.1"]
    assert [path.split("/")[0] for path, _, _ in pulled] == ["Cyst", "Cyst", "unlabelled", "Stone", "Tumor", "Tumor"]
    assert "names none" in pulled[2][2] and pulled[2][1] is None
    assert pulled[0][1] == FakePacs.series[("1.1", "1.1.1")][0]  # the bytes the PACS sent, unchanged
    assert pydicom.dcmread(io.BytesIO(pulled[3][1])).StudyDescription == "CT - Stone"
    assert not any("1.1" in path for path, _, _ in pulled)  # salted names, no UIDs


def test_a_series_that_is_not_dicom_is_quarantined_not_fatal(pacs):
    FakePacs.series[("1.1", "1.1.2")] = [b"not a dicom file at all" * 10]
    pulled = list(pulled_files(client_for(pacs), [StudyRef("1.1", 4)], CLASSES, "StudyDescription", "s"))
    assert [(path.split("/")[0], reason[:9]) for path, _, reason in pulled][-1] == ("unreadable", "not DICOM")
    assert len(pulled) == 4  # the other series is pulled whole


def test_5xx_answers_are_retried_by_the_session(pacs):
    FakePacs.fail_with = [503, 502]
    assert len(client_for(pacs, attempts=3).studies()) == 3
    FakePacs.fail_with = [503, 503]
    with pytest.raises(PacsError, match="HTTP 503 to QIDO-RS search for studies"):
        client_for(pacs, attempts=2).studies()


def test_refused_credentials_and_an_unreachable_pacs_say_so(pacs):
    FakePacs.fail_with = [401]
    with pytest.raises(PacsError, match="refused the credentials .*dicomweb_password_env"):
        client_for(pacs).studies()
    with pytest.raises(PacsError, match="unreachable"):
        client_for("http://127.0.0.1:9/dicom-web").studies()


def test_failures_and_logs_name_no_uid(pacs, caplog):
    caplog.set_level(logging.INFO)  # the stages' level
    client = client_for(pacs)
    with pytest.raises(PacsError, match="HTTP 404 to WADO-RS retrieve of a series") as raised:
        list(client.instances(SeriesRef("1.1", "1.1.9", 1)))
    assert "1.1.9" not in str(raised.value) and "<uid>" in str(raised.value)
    list(pulled_files(client, [StudyRef("1.2", 2)], CLASSES, "StudyDescription", "s"))
    assert "1.2.1" not in caplog.text
