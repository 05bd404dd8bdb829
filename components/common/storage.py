"""Object storage behind one small interface: a local folder or S3 (boto3) by URI."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

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


def log_retries(client: object) -> None:
    """Log each retry botocore makes (it only logs at DEBUG), so an outage shows in the stage log."""

    def before_send(request: object, **_: object) -> None:
        retries = getattr(request, "context", {}).get("retries", {})
        attempt, most = retries.get("attempt", 1), retries.get("max")
        if attempt > 1 and most:
            log.warning("S3 %s %s: retry %d/%d (botocore %s retries)", request.method, request.url,
                        attempt - 1, most - 1, client.meta.config.retries.get("mode"))

    client.meta.events.register("before-send.s3", before_send)


@dataclass
class S3Store:
    """An S3 bucket (AWS, MinIO, moto) under an optional key prefix; botocore retries each call."""

    bucket: str
    prefix: str
    client: object = field(repr=False)
    attempts: int = 1  # botocore's total_max_attempts, named in the error when an endpoint stays down

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, action: Callable[[], T], what: str) -> T:
        """Run one S3 call (botocore retries transient failures); turn what is left into a StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as Unreachable

        try:
            return action()
        except (Unreachable, HTTPClientError) as exc:  # refused, reset, timed out: after the last retry
            raise StorageError(f"{what}: endpoint unreachable after {self.attempts} attempts "
                               f"({type(exc).__name__}: {exc}); check the endpoint and re-run: "
                               "stored objects are kept and skipped") from None
        except ClientError as exc:
            tried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
            raise StorageError(f"{what}: {exc} (after {tried} attempt{'s' if tried > 1 else ''})") from None
        except BotoCoreError as exc:
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
        # botocore retries connection errors, 5xx and throttling with jittered exponential backoff
        config=Config(retries={"mode": settings.retry_mode, "total_max_attempts": settings.retry_attempts},
                      connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s),
    )
    log_retries(client)
    return S3Store(bucket=bucket, prefix=prefix.strip("/"), client=client, attempts=settings.retry_attempts)
