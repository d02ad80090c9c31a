"""The node's HTTP API mounted inside another ASGI application.

A program with a web application of its own (here a tiny Starlette "portal") runs a management
node in the same process and serves the node's REST API under ``/cloud``, next to its own routes,
from one server::

    python examples/embed/asgi_mount.py --port 8000
    curl http://127.0.0.1:8000/                      # the portal's own route
    curl http://127.0.0.1:8000/cloud/v1/health       # the node's API

The node's SDK works against the mounted API (``Client("http://127.0.0.1:8000/cloud")``). The
node starts with the application (its lifespan) and stops with it: Ctrl-C or SIGTERM stop the
server, then the node, then the process ends by that signal, as uvicorn does.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from zstack_core import ManagementNode
from zstack_core.http import create_app


def build_app(data_dir: str) -> Starlette:
    """The portal: its own route, and the node's API mounted at ``/cloud`` once the node runs."""
    node = ManagementNode(data_dir=data_dir)

    async def home(request: Request) -> JSONResponse:
        zones = await node.query.find("Zone")
        return JSONResponse({"app": "portal", "cloud": "/cloud", "node": node.state,
                             "zones": sorted(z.name for z in zones)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with node:
            # create_app reads the routes of the loaded plugins, so it is built once the node runs.
            app.router.routes.append(Mount("/cloud", app=create_app(node)))
            print(f"portal: node running, data in {data_dir}", flush=True)
            yield
        print("portal: node stopped", flush=True)

    return Starlette(routes=[Route("/", home)], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default=None, help="the node's data directory (default: a new temporary one)")
    args = parser.parse_args()
    app = build_app(args.data_dir or tempfile.mkdtemp(prefix="zstack-portal-"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
