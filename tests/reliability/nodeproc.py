"""A management node in a process of its own (``zstack node start``), and a small asyncio HTTP
client to load it with.

The node runs as an operator would run it, so the tests can measure its memory from outside
(``/proc/<pid>/status``), kill it with SIGKILL, and restart it on the same data. The client is
plain asyncio streams speaking HTTP/1.1 with keep-alive: thousands of requests in flight from
one thread, with no client library in between whose own limits would shape the numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["HttpConnection", "NodeProcess", "rss_kib"]


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in KiB, from ``/proc/<pid>/status``."""
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"^VmHWM:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    return rss, hwm


class NodeProcess:
    """``zstack --data-dir DIR node start`` on a free loopback port; ``url`` once ready."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.data_dir = data_dir
        self.env = env or {}
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log = data_dir / "node.log"

    def start(self, timeout: float = 90.0) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
        env.update(self.env)
        before = self.log.read_text().count("HTTP API at ") if self.log.exists() else 0
        out = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zstack_core.cli", "--data-dir", str(self.data_dir), "node", "start",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            found = re.findall(r"HTTP API at (http://[\d.]+:(\d+))", text)
            if len(found) > before:
                self.url, port = found[-1]
                self.port = int(port)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited with {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"the node did not start in {timeout}s:\n{self.log.read_text()[-4000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL: no clean-up of any kind runs."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; ``request`` returns (status, headers, JSON body)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = self.reader = None

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        try:
            self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            await self.writer.drain()
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionResetError("the server closed the connection")
            status = int(status_line.split()[1])
            got: dict[str, str] = {}
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                got[key.strip().lower()] = value.strip()
            raw = await self.reader.readexactly(int(got.get("content-length", "0")))
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.close()
            raise
        if got.get("connection", "").lower() == "close":
            await self.close()
        return status, got, json.loads(raw) if raw else None
