"""Serving the ASGI application with uvicorn on the node's own event loop.

uvicorn's ``Server.serve`` would take over SIGINT/SIGTERM; the node's owner (``zstack node
start``, an embedding program) handles signals itself, so the server is driven through its
``startup``/``main_loop``/``shutdown`` steps instead, and stopped by :meth:`HttpServer.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import uvicorn

from .app import create_app

if TYPE_CHECKING:
    from ..node import ManagementNode

__all__ = ["HttpServer"]

log = logging.getLogger("zstack.http")


class HttpServer:
    """The HTTP API of ``node`` on ``host``:``port`` (port 0: any free port).

    ``app`` serves another ASGI application instead (one that mounts :func:`create_app`'s), on
    the node's loop, as an embedding program would.
    """

    def __init__(self, node: ManagementNode, host: str, port: int, app: Any = None) -> None:
        self.node = node
        self.host = host
        self.port = port
        self.app = app if app is not None else create_app(node)
        config = uvicorn.Config(self.app, host=host, port=port, lifespan="off", log_config=None,
                                access_log=False, server_header=False, timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._loop_task: asyncio.Task[Any] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> HttpServer:
        """Listen; returns once connections are accepted (``port`` is then the bound port)."""
        config = self._server.config
        if not config.loaded:
            config.load()
        self._server.lifespan = config.lifespan_class(config)
        try:
            await self._server.startup()
        except SystemExit:  # uvicorn exits when it cannot bind
            raise OSError(f"the HTTP API cannot listen on {self.host}:{self.port} (see the log)") from None
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
                break
        self._loop_task = asyncio.get_running_loop().create_task(self._server.main_loop())
        log.info("HTTP API listening on %s", self.url)
        return self

    async def stop(self) -> None:
        """Stop accepting connections and finish the ones in flight."""
        if self._loop_task is None:
            return
        self.node.api.jobs.wake_all()  # held job polls answer now, not after the grace period
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        self._loop_task = None
        await self._server.shutdown()

    async def serve_forever(self) -> None:
        """Start, then serve until cancelled; stops cleanly on cancellation."""
        if self._loop_task is None:
            await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())
