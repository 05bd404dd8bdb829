"""Object storage: botocore retries transient S3 failures (standard/adaptive mode), each retry is logged,
and what is left after the last attempt is one clear StorageError; refusals are not retried."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.common.params import StorageParams
from components.common.storage import StorageError, open_store
from tests.services import free_port

NO_SUCH_BUCKET = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code>'
                  b"<Message>no bucket</Message></Error>")


class FlakyS3(BaseHTTPRequestHandler):
    """Answers the first `failures` requests with `status`, then 200 with an empty body; counts requests."""

    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" at once
    failures = 0
    status = 503
    body = b""
    seen: list[str] = []

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("amz-sdk-request", ""))
        failing = len(self.seen) <= self.failures
        body = self.body if failing else b""
        self.send_response(self.status if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Iterator[type[FlakyS3]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    handler = type("Handler", (FlakyS3,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler
    httpd.shutdown()


def store(endpoint: str, attempts: int, mode: str = "standard"):
    settings = StorageParams(endpoint_url=endpoint, retry_mode=mode, retry_attempts=attempts, connect_timeout_s=1)
    return open_store("s3://bucket/prefix", settings)


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_server_errors_are_retried_by_botocore_until_success(server, mode, caplog):
    server.failures = 2
    store(server.endpoint, attempts=4, mode=mode).put("a.dcm", b"x")
    assert len(server.seen) == 3  # two 503s, then the write that succeeds
    assert ["attempt=2" in server.seen[1], "attempt=3" in server.seen[2]] == [True, True]
    assert "retry 1/3" in caplog.text and "retry 2/3" in caplog.text and f"botocore {mode}" in caplog.text


def test_server_that_keeps_failing_gives_a_clear_error_after_the_last_attempt(server):
    server.failures = 99
    with pytest.raises(StorageError, match=r"cannot write s3://bucket/prefix/a.dcm: .*503.* \(after 2 attempts\)"):
        store(server.endpoint, attempts=2).put("a.dcm", b"x")
    assert len(server.seen) == 2


def test_a_refusal_is_not_retried(server):
    server.failures, server.status, server.body = 99, 404, NO_SUCH_BUCKET
    with pytest.raises(StorageError, match=r"NoSuchBucket.*\(after 1 attempt\)"):
        store(server.endpoint, attempts=5).put("a.dcm", b"x")
    assert len(server.seen) == 1


def test_endpoint_that_stays_down_gives_a_clear_error(monkeypatch, caplog):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    with pytest.raises(StorageError, match=r"cannot write s3://bucket/prefix/a.dcm: endpoint unreachable "
                                           r"after 2 attempts \(EndpointConnectionError"):
        store(down, attempts=2).put("a.dcm", b"x")
    assert "retry 1/1" in caplog.text


def test_retry_mode_is_validated():
    with pytest.raises(ValueError):
        StorageParams(retry_mode="legacy")
