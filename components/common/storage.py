"""Object storage behind one small interface: a local folder or S3 (boto3) by URI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from components.common.params import StorageParams


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


@dataclass
class S3Store:
    """An S3 bucket (AWS, MinIO, moto) under an optional key prefix."""

    bucket: str
    prefix: str
    client: object = field(repr=False)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot reach {self.uri}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach {self.uri}: {exc}") from None

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {self.uri}/{key}: {exc}") from None

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def keys(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                yield item["Key"][strip:]


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
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )
    return S3Store(bucket=bucket, prefix=prefix.strip("/"), client=client)
