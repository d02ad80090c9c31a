"""The node's HTTP API: an ASGI application (Starlette) and the server that runs it (uvicorn).

``create_app(node)`` gives the application, to mount into another ASGI program;
:class:`HttpServer` serves it on ``api.host``:``api.port`` (127.0.0.1:8080 by default) on the
node's own event loop, which is what ``zstack node start`` and ``node.serve_http()`` do.
"""

from __future__ import annotations

from .app import create_app
from .server import HttpServer

__all__ = ["HttpServer", "create_app"]
