"""Real services for tests, started on 127.0.0.1 by the test itself: moto's S3 server, Orthanc and Redis.

Orthanc comes from Debian's `orthanc` and `orthanc-dicomweb` packages, Redis (the Celery broker of the
multi-worker Airflow test) from `redis-server` (`make system-deps`); a test that needs one skips with a clear
message when its binary is absent.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MotoS3:
    """moto's S3 server in a thread; `stop()` + `start()` keep the port and the stored objects."""

    port: int = 0
    server: object = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def reset(self) -> MotoS3:
        """Forget every bucket: moto keeps its state per process, across servers and tests."""
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [item["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                for item in page.get("Contents", [])]


@dataclass
class TcpProxy:
    """A TCP relay on 127.0.0.1 to `target_port`: `stop()` cuts every open connection, like an outage.

    (Stopping moto's werkzeug server alone leaves keep-alive connections served.)
    """

    target_port: int
    port: int = 0
    _listener: socket.socket | None = field(default=None, repr=False)
    _open: list[socket.socket] = field(default_factory=list, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self.port, self._listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by stop()
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        """Close the listener and every relayed connection: clients now get 'connection refused'."""
        if self._listener is not None:
            try:  # shutdown wakes the thread blocked in accept(); close alone may let one more client in
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._open.clear()


def orthanc_available() -> str:
    """'' when Orthanc with its DICOMweb plugin can run here, else why not (the skip message)."""
    if shutil.which(ORTHANC_BINARY) is None:
        return "Orthanc is not installed: run `make system-deps` (Debian packages orthanc, orthanc-dicomweb)"
    if not _dicomweb_plugin():
        return "Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb (or `make system-deps`)"
    return ""


def _dicomweb_plugin() -> str:
    for folder in DICOMWEB_PLUGIN_DIRS:
        plugin = Path(folder, "libOrthancDicomWeb.so")
        if plugin.is_file():
            return str(plugin)
    return ""


@dataclass
class Orthanc:
    """An Orthanc PACS with DICOMweb, storage and config in `root`, HTTP and DICOM on free local ports."""

    root: Path
    http_port: int = 0
    user: str = "kidney"
    password: str = field(default_factory=lambda: secrets.token_hex(8))
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout_s: float = 30) -> Orthanc:
        self.http_port = self.http_port or free_port()
        config = self.root / "orthanc.json"
        self.root.mkdir(parents=True, exist_ok=True)
        # Orthanc has no bind-address option: its DICOM server is off and the HTTP server refuses
        # every non-loopback client (RemoteAccessAllowed false) and asks for the test password.
        config.write_text(json.dumps({
            "Name": "KIDNEY-CT-TEST", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "HttpPort": self.http_port, "DicomServerEnabled": False,
            "DicomPort": free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {self.user: self.password}, "Plugins": [_dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }, indent=2))
        log = (self.root / "orthanc.log").open("w")
        self.process = subprocess.Popen([ORTHANC_BINARY, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.root)
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", timeout=1, auth=self.auth).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s")

    def upload(self, data: bytes) -> None:
        """Store one DICOM instance through Orthanc's REST API."""
        response = requests.post(f"{self.url}/instances", data=data, timeout=30, auth=self.auth,
                                 headers={"Content-Type": "application/dicom"})
        response.raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


REDIS_BINARY = "redis-server"


@dataclass
class Redis:
    """redis-server on 127.0.0.1 only, in memory (no snapshot, no append-only file), its own process group."""

    folder: Path
    port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> Redis:
        binary = shutil.which(REDIS_BINARY) or "/usr/bin/redis-server"
        self.port = self.port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.out").open("w")
        self.process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                         "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "yes"],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.folder / 'redis.out').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def redis_available() -> str:
    """'' when redis-server can be started here, else why not (for a skip)."""
    if shutil.which(REDIS_BINARY) or Path("/usr/bin/redis-server").is_file():
        return ""
    return "redis-server is not installed (Debian package `redis-server`; `make system-deps` installs it)"


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every POSTed JSON body (an alert webhook's stand-in).

    `fail_first` answers that many requests with 503 first (a receiver that is briefly down).
    """

    fail_first: int = 0
    received: list = field(default_factory=list)
    attempts: int = 0
    server: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kidney-ct"

    def __enter__(self) -> WebhookReceiver:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(503)
                else:
                    receiver.received.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
