"""The node-to-node endpoints, added to the node's HTTP API by :func:`install`.

``POST /v1/cluster/messages`` (a forwarded message; answers its reply), ``/v1/cluster/events``
(events published on a peer), ``/v1/cluster/configs`` (a peer changed a global config),
``/v1/cluster/membership`` (a peer found a node dead: beat now) and ``/v1/cluster/ping``. Each request must carry its body's HMAC under the cluster secret in
``X-ZStack-Cluster-Signature``: without it, or with a wrong one, the answer is ``401`` with
``MN.1002`` and nothing is dispatched.

:func:`install` also names, on every HTTP API response, the node that handled the call in
``X-ZStack-Node`` (the owner, when the call was forwarded).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ErrorCode, SysErrors, ZStackError, err
from ..http.status import status_of
from . import wire
from .errors import ClusterErrors
from .manager import CONFIGS_PATH, EVENTS_PATH, MEMBERSHIP_PATH, MESSAGES_PATH, PING_PATH, handled_by

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..node import ManagementNode

__all__ = ["NodeHeaderMiddleware", "cluster_routes", "install"]

log = logging.getLogger("zstack.cluster")

Handler = Callable[[bytes], Awaitable[bytes]]


def _answer(body: bytes, node: ManagementNode, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json",
                    headers={wire.SIGNATURE_HEADER: node.cluster.sign(body)})


def _refuse(error: ErrorCode, node: ManagementNode) -> Response:
    return Response(wire.error_body(error), status_code=status_of(error, node.error_spaces),
                    media_type="application/json")


def _endpoint(node: ManagementNode, handle: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body = await request.body()
        if not node.cluster.verify(body, request.headers.get(wire.SIGNATURE_HEADER)):
            sender = request.headers.get(wire.NODE_HEADER, "unknown")
            log.warning("refused a node-to-node request from %s (claims node %s): bad or missing signature",
                        request.client.host if request.client else "?", sender)
            return _refuse(ClusterErrors.error("1002", f"{request.url.path} takes requests signed with the "
                                                       "cluster secret only"), node)
        if node.state != "Running":
            return _refuse(SysErrors.error("1014", f"the management node is {node.state}"), node)
        try:
            return _answer(await handle(body), node)
        except ZStackError as exc:
            return _refuse(exc.error, node)
        except Exception as exc:
            log.exception("node-to-node request to %s failed", request.url.path)
            return _refuse(err("1000", f"{type(exc).__name__}: {exc}"), node)

    return endpoint


def cluster_routes(node: ManagementNode) -> list[Route]:
    """The node-to-node routes of ``node``."""

    async def message(body: bytes) -> bytes:
        return await node.cluster.receive_message(body)

    async def events(body: bytes) -> bytes:
        return wire.dumps({"delivered": node.cluster.receive_events(body)})

    async def configs(body: bytes) -> bytes:
        return wire.dumps({"changed": await node.cluster.receive_config_nudge()})

    async def ping(body: bytes) -> bytes:
        return wire.dumps({"node": node.cluster.uuid})

    async def membership(body: bytes) -> bytes:
        node.cluster.wake()
        return wire.dumps({"node": node.cluster.uuid})

    return [Route(path, _endpoint(node, handler), methods=["POST"])
            for path, handler in ((MESSAGES_PATH, message), (EVENTS_PATH, events),
                                  (CONFIGS_PATH, configs), (PING_PATH, ping), (MEMBERSHIP_PATH, membership))]


class NodeHeaderMiddleware:
    """Adds ``X-ZStack-Node: <uuid>`` to every response: the node that handled the request."""

    def __init__(self, app: Any, node: ManagementNode) -> None:
        self.app = app
        self.node = node

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        box: list[str] = []
        token = handled_by.set(box)

        async def send_with_node(message: Any) -> None:
            if message["type"] == "http.response.start":
                handler = box[-1] if box else self.node.cluster.uuid
                message = {**message, "headers": [*message.get("headers", []),
                                                   (wire.NODE_HEADER.lower().encode(), handler.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_node)
        finally:
            handled_by.reset(token)


def install(app: Starlette, node: ManagementNode) -> None:
    """Add the node-to-node routes and the ``X-ZStack-Node`` header to the API application."""
    app.router.routes[0:0] = cluster_routes(node)  # first: a forwarded call should not scan every API route
    app.add_middleware(NodeHeaderMiddleware, node=node)
