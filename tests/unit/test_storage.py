"""Object storage: S3 calls retry transient failures with exponential backoff, then fail clearly."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from components.common.storage import RetryPolicy, StorageError, with_retries


def flaky(failures: int, exc: Exception):
    """An action that raises `exc` `failures` times, then returns 'ok'; counts its calls."""
    calls = {"n": 0}

    def action() -> str:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc
        return "ok"

    return action, calls


DOWN = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


def test_backoff_doubles_and_is_capped():
    assert RetryPolicy(attempts=6, backoff_s=0.5, max_backoff_s=3).waits() == [0.5, 1.0, 2.0, 3, 3]
    assert RetryPolicy(attempts=1).waits() == []


def test_transient_failures_are_retried_with_backoff_until_success(caplog):
    action, calls = flaky(2, DOWN)
    sleeps: list[float] = []
    assert with_retries(action, "cannot write s3://b/k", RetryPolicy(4, 0.1, 1), sleeps.append) == "ok"
    assert calls["n"] == 3 and sleeps == [0.1, 0.2]
    assert "retry 1/3" in caplog.text and "retry 2/3" in caplog.text


def test_endpoint_that_stays_down_gives_a_clear_error_after_the_last_attempt():
    action, calls = flaky(99, DOWN)
    sleeps: list[float] = []
    with pytest.raises(StorageError, match=r"cannot write s3://b/k: endpoint unreachable after 3 attempts"):
        with_retries(action, "cannot write s3://b/k", RetryPolicy(3, 0.1, 1), sleeps.append)
    assert calls["n"] == 3 and sleeps == [0.1, 0.2]


def test_a_refusal_is_not_retried():
    missing = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "no bucket"},
                           "ResponseMetadata": {"HTTPStatusCode": 404}}, "PutObject")
    action, calls = flaky(99, missing)
    with pytest.raises(ClientError):
        with_retries(action, "x", RetryPolicy(5, 0.1, 1), lambda _: None)
    assert calls["n"] == 1


def test_server_errors_are_retried():
    busy = ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
    action, calls = flaky(1, busy)
    assert with_retries(action, "x", RetryPolicy(2, 0, 0), lambda _: None) == "ok" and calls["n"] == 2
