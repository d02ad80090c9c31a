"""A small HTTP/1.1 client for node-to-node requests, on asyncio streams.

It talks only to peers' own HTTP servers (uvicorn), so it needs little: ``POST`` with a JSON
body, keep-alive connections pooled per peer, ``Content-Length`` or chunked responses. A general
client (httpx) costs several times more per request than this, and every forwarded call pays it.

Failures are told apart because the caller must act differently on each:

* :class:`PeerUnreachable`: no connection could be made, so nothing was delivered;
* :class:`PeerLost`: the connection broke after the request was sent; it may have been handled.

A pooled connection the server closed while idle (keep-alive timeout) is detected before use,
and a request that meets such a connection's EOF before a single byte of answer is sent again on
a fresh connection: the server closes only idle connections, so it never saw that request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

__all__ = ["HttpPeerClient", "PeerLost", "PeerUnreachable"]


class PeerUnreachable(ConnectionError):
    """No connection to the peer: the request was not delivered."""


class PeerLost(ConnectionError):
    """The connection broke after the request was sent: it may or may not have been handled."""


class _Stale(Exception):
    """A reused connection was closed by the server before it read our request."""


class _Conn:
    __slots__ = ("reader", "writer", "idle_since", "reused", "aborted")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.reused = False
        self.aborted = False

    def stale(self) -> bool:
        """A pooled connection that met EOF before any answer (and that we did not break)."""
        return self.reused and not self.aborted

    def usable(self, now: float, max_idle: float) -> bool:
        return (not self.reader.at_eof() and not self.writer.is_closing()
                and now - self.idle_since < max_idle)

    def close(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class HttpPeerClient:
    """Keep-alive connections to peers, ``(host, port)`` -> idle connections.

    ``max_idle`` stays below uvicorn's 5 s keep-alive timeout so an idle connection is dropped
    by us before the server drops it.
    """

    def __init__(self, *, connect_timeout: float = 2.0, max_idle: float = 4.0, max_pooled: int = 64) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_pooled = max_pooled
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._busy: dict[tuple[str, int], set[_Conn]] = {}

    async def _connect(self, key: tuple[str, int]) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(*key)
        except (OSError, TimeoutError) as exc:
            raise PeerUnreachable(f"cannot connect to {key[0]}:{key[1]}: {exc or type(exc).__name__}") from None
        return _Conn(reader, writer)

    def _take(self, key: tuple[str, int]) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.max_idle):
                conn.reused = True
                return conn
            conn.close()
        return None

    def _give_back(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_pooled:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def post(self, host: str, port: int, path: str, body: bytes, headers: Mapping[str, str],
                   timeout: float) -> tuple[int, dict[str, str], bytes]:
        """``POST`` ``body`` and return ``(status, lower-cased headers, body)``.

        Raises :class:`PeerUnreachable`, :class:`PeerLost` or ``TimeoutError`` (the connection
        is dropped: the answer, if it ever comes, has nobody to read it).
        """
        key = (host, port)
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        busy = self._busy.setdefault(key, set())
        conn = self._take(key)
        try:
            async with asyncio.timeout(timeout):
                if conn is None:
                    conn = await self._connect(key)
                busy.add(conn)
                try:
                    status, response_headers, data, keep = await self._exchange(conn, request)
                except _Stale:
                    busy.discard(conn)
                    conn.close()
                    conn = await self._connect(key)
                    busy.add(conn)
                    status, response_headers, data, keep = await self._exchange(conn, request)
        except BaseException:
            if conn is not None:
                busy.discard(conn)
                conn.close()
            raise
        busy.discard(conn)
        if keep:
            self._give_back(key, conn)
        else:
            conn.close()
        return status, response_headers, data

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        reader = conn.reader
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            status_line = await reader.readline()
        except (ConnectionError, OSError) as exc:
            if conn.stale():
                raise _Stale() from None
            raise PeerLost(f"connection lost: {exc}") from None
        if not status_line:
            if conn.stale():
                raise _Stale()
            raise PeerLost("the peer closed the connection without answering")
        try:
            parts = status_line.split(None, 2)
            status = int(parts[1])
            headers: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise PeerLost("the peer closed the connection in the middle of its answer")
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
                keep = headers.get("connection", "").lower() != "close"
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await self._chunked(reader)
                keep = headers.get("connection", "").lower() != "close"
            else:
                body = await reader.read()
                keep = False
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            raise PeerLost(f"the peer's answer broke off: {type(exc).__name__}: {exc}") from None
        return status, headers, body, keep

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def abort(self, host: str, port: int) -> int:
        """Break every connection to ``host``:``port``: requests waiting on it fail at once with
        :class:`PeerLost` (the peer is known to be gone). Returns how many were in flight."""
        key = (host, port)
        for conn in self._idle.pop(key, []):
            conn.close()
        busy = self._busy.get(key, set())
        for conn in list(busy):
            conn.aborted = True
            conn.close()
        return len(busy)

    def close(self) -> None:
        for key in list(self._idle) + list(self._busy):
            self.abort(*key)
        self._idle.clear()
        self._busy.clear()
