"""Fixtures of the storage tests: a node with storage (alone, or with every installed plugin),
tiny real images made with qemu-img, and an HTTP server on 127.0.0.1 serving them.

``storage_node`` loads only zstack-core and zstack-storage (what does not need hosts);
``cloud`` loads every installed plugin (compute included) for tests with hosts and VMs.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import pytest

import zstack_storage.plugin
from zstack_core import ManagementNode


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "libvirtd: needs a real libvirtd + QEMU (the libvirtd fixture)")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``ZSTACK_*`` variable leaks in from the shell; the node's data stays in tmp_path."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ZSTACK_NODE_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def data_dir(isolated_env: Path) -> Path:
    return isolated_env


@pytest.fixture
async def storage_node(data_dir: Path) -> AsyncIterator[ManagementNode]:
    """A node running only the kernel and zstack-storage."""
    async with ManagementNode(plugins=[zstack_storage.plugin], load_entry_points=False, data_dir=data_dir) as node:
        yield node


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def qcow2_image(tmp_path: Path) -> Path:
    """A 4 MiB (virtual) qcow2 with 64 KiB of known data at offset 0."""
    path = tmp_path / "tiny.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "4M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.raw"
    path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return path


@pytest.fixture
def iso_image(tmp_path: Path) -> Path:
    """A file with an ISO 9660 primary volume descriptor signature, as an .iso has."""
    data = bytearray(64 * 1024)
    data[0x8000:0x8006] = b"\x01CD001"
    path = tmp_path / "tiny.iso"
    path.write_bytes(bytes(data))
    return path


@attrs.define
class Served:
    """What the test server answers for one path."""

    body: bytes
    status: int = 200
    content_length: int | None = None
    """Announce this length instead of the body's (a lying server)."""
    send_bytes: int | None = None
    """Send only this many bytes, then close (an interrupted download)."""
    chunk: int = 64 * 1024
    delay: float = 0.0
    """Seconds to wait between chunks (a slow server)."""
    requests: int = 0


class HttpServer:
    """An HTTP server on 127.0.0.1 in a thread of the test process."""

    def __init__(self) -> None:
        self.routes: dict[str, Served] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served = server.routes.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                served.requests += 1
                self.send_response(served.status)
                length = served.content_length if served.content_length is not None else len(served.body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                body = served.body if served.send_bytes is None else served.body[: served.send_bytes]
                try:
                    for i in range(0, len(body), served.chunk):
                        self.wfile.write(body[i:i + served.chunk])
                        self.wfile.flush()
                        if served.delay:
                            time.sleep(served.delay)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if served.send_bytes is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-http", daemon=True)

    def serve(self, path: str, body: bytes, **kwargs: Any) -> str:
        self.routes[path] = Served(body=body, **kwargs)
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
