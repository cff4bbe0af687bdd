"""Object stores on the loopback interface for the remote-data tests: moto's S3 server (it speaks the S3 wire
protocol, so s3fs and botocore run their real code), Python's http.server with byte ranges, and a proxy in front
of either that counts the bytes it serves and injects faults (503s, connections reset mid-body)."""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

#: Credentials moto accepts (it does not check them); set for the tests' processes and their children.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str, bucket: str) -> None:
    import s3fs

    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` that answers ``Range: bytes=a-b`` with a 206 (fsspec seeks with ranges)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start, end = int(match.group(1)), int(match.group(2) or size - 1)
        end = min(end, size - 1)
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return _Limited(f, end - start + 1)


class _Limited:
    """A file read up to ``n`` bytes (what ``copyfile`` of the handler sends)."""

    def __init__(self, f, n: int) -> None:  # type: ignore[no-untyped-def]
        self.f, self.n = f, n

    def read(self, size: int = -1) -> bytes:
        size = self.n if size < 0 else min(size, self.n)
        data = self.f.read(size)
        self.n -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """Python's http.server serving ``folder`` (with byte ranges) on 127.0.0.1; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Faults:
    """Which GETs of ``.tar`` objects fail: every ``every``-th one, alternately a 503 and a reset mid-body."""

    every: int = 0
    tar_gets: int = 0
    injected: dict[str, int] = field(default_factory=lambda: {"503": 0, "reset": 0})
    served_bytes: int = 0  # response body bytes sent to clients (what the proxy's clients downloaded)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            if method != "GET" or not path.split("?")[0].endswith(".tar") or not self.every:
                return None
            self.tar_gets += 1
            if self.tar_gets % self.every:
                return None
            kind = "503" if (self.tar_gets // self.every) % 2 else "reset"
            self.injected[kind] += 1
            return kind


def _proxy_handler(upstream: tuple[str, int], faults: Faults) -> type[http.server.BaseHTTPRequestHandler]:
    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault = faults.next_fault(self.command, self.path)
            if fault == "503":
                payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)
                self.close_connection = True
                return
            conn = http.client.HTTPConnection(*upstream, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            self.send_response(response.status)
            for k, v in response.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                    self.send_header(k, v)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault == "reset" and len(data) > 1:  # half the body, then a TCP reset
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                with faults.lock:
                    faults.served_bytes += len(data) // 2
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self.wfile.write(data)
            with faults.lock:
                faults.served_bytes += len(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Proxy


@contextmanager
def proxy(upstream: str, every: int = 0) -> Iterator[tuple[str, Faults]]:
    """A proxy to ``upstream`` (``http://host:port``) on 127.0.0.1 that counts what it serves and fails every
    ``every``-th GET of a ``.tar`` object (0: none); yields its URL and its :class:`Faults` record."""
    host, port = upstream.removeprefix("http://").split(":")
    faults = Faults(every=every)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler((host, int(port)), faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()


def set_s3_env() -> None:
    os.environ.update(S3_ENV)


class RecordTrainIds(pl.Callback):
    """A Lightning callback (``+callbacks.record_ids._target_=...``) that appends each training batch's sample ids
    to ``folder/rank<global rank>.jsonl``: what every process trained on, for the exactly-once checks."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"rank{trainer.global_rank}.jsonl").open("a") as f:
            f.write(json.dumps([str(i) for i in batch.ids]) + "\n")
