"""Object storage behind one small interface: a local folder or S3 (boto3) by URI."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, TypeVar

from components.common.params import StorageParams

log = logging.getLogger("kidney_ct")
T = TypeVar("T")


class StorageError(Exception):
    """Object storage could not be reached or an object is missing."""


class ObjectStore(Protocol):
    uri: str

    def exists(self, key: str) -> bool: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...
    def keys(self, prefix: str = "") -> Iterator[str]: ...


@dataclass
class LocalStore:
    """A folder used as object storage; keys are relative POSIX paths."""

    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"object not found in {self.root}: {key}") from None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a killed run never leaves half an object

    def keys(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".part"):
                yield path.relative_to(self.root).as_posix()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry an S3 call when the endpoint cannot be reached."""

    attempts: int = 5
    backoff_s: float = 0.5  # first wait; doubles each retry
    max_backoff_s: float = 8.0

    def waits(self) -> list[float]:
        """The pauses between attempts: backoff, 2*backoff, ... capped at max_backoff_s."""
        return [min(self.backoff_s * 2**i, self.max_backoff_s) for i in range(max(self.attempts - 1, 0))]


def _transient(exc: Exception) -> bool:
    """Connection-level failures (endpoint down, reset, timeout, 5xx) that a retry may cure."""
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectionError)):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") in ("SlowDown", "RequestTimeout")
    return type(exc).__name__ in ("ConnectTimeoutError", "ProxyConnectionError")


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `action`; on a transient failure wait and retry with exponential backoff, then give up clearly."""
    waits = policy.waits()
    for attempt in range(len(waits) + 1):
        try:
            return action()
        except Exception as exc:  # botocore raises many types; only transient ones are retried
            if not _transient(exc):
                raise
            if attempt == len(waits):
                raise StorageError(f"{what}: endpoint unreachable after {attempt + 1} attempts over "
                                   f"{sum(waits):.1f} s of backoff ({type(exc).__name__}: {exc}); "
                                   "check the endpoint and re-run: stored objects are kept and skipped") from None
            log.warning("%s failed (%s); retry %d/%d in %.2f s", what, type(exc).__name__, attempt + 1,
                        len(waits), waits[attempt])
            sleep(waits[attempt])
    raise AssertionError("unreachable")


@dataclass
class S3Store:
    """An S3 bucket (AWS, MinIO, moto) under an optional key prefix; calls retry with backoff."""

    bucket: str
    prefix: str
    client: object = field(repr=False)
    retry: RetryPolicy = RetryPolicy()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, action: Callable[[], T], what: str) -> T:
        """Retry transient failures; turn every other botocore error into a StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return with_retries(action, what, self.retry)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{what}: {exc}") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return self._call(head, f"cannot reach {self.uri}")

    def get(self, key: str) -> bytes:
        return self._call(lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read(),
                          f"cannot read {self.uri}/{key}")

    def put(self, key: str, data: bytes) -> None:
        self._call(lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data),
                   f"cannot write {self.uri}/{key}")

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Every key under `prefix` (listed in full first, so a failure never yields half a listing)."""
        return iter(self._call(lambda: self._list(prefix), f"cannot list {self.uri}/{prefix}"))

    def _list(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        return [item["Key"][strip:] for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))
                for item in page.get("Contents", [])]


def open_store(uri: str, settings: StorageParams) -> ObjectStore:
    """Open `uri` (a folder, or s3://bucket/prefix) as an object store; create a local root."""
    if not uri.startswith("s3://"):
        root = Path(uri)
        root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root)
    import boto3
    from botocore.config import Config

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"no bucket in storage URI {uri!r}; expected s3://bucket/prefix")
    client = boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=settings.region,
        # botocore does not retry itself: S3Store retries with logged backoff, then fails clearly
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                      connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s),
    )
    policy = RetryPolicy(settings.retry_attempts, settings.retry_backoff_s, settings.retry_max_backoff_s)
    return S3Store(bucket=bucket, prefix=prefix.strip("/"), client=client, retry=policy)
