"""The ASGI application: ZStack's REST API over the node's API pipeline.

Every route comes from an ``ApiRegistration.route``; what a request carries becomes the API
message's JSON body, which goes through the same structuring (``SYS.1007`` naming the field),
interceptors and service as an in-process call:

* ``POST``: ``{"params": {...}, "systemTags": [...], "userTags": [...]}``;
* ``PUT .../actions``: ``{"startVmInstance": {...}, "systemTags": [...]}``: the key is the API
  name in lowerCamel and chooses among the APIs sharing the path;
* ``GET`` of a ``Query<Resource>`` API: ``q=name=vm1``, ``q=memorySize>1024``, ``q=uuid?=a,b``
  (repeated), ``limit``, ``start``, ``sort=+name|-name``, ``count``, ``replyWithCount``;
* other ``GET`` and ``DELETE``: query-string parameters are the message fields
  (``?deleteMode=Enforcing``), parsed by the field's type;
* ``{placeholders}`` in the path fill the field of that name.

The session travels in ``Authorization: OAuth <session uuid>`` (ZStack's header). A long API
answers ``202`` with ``Location: /v1/api-jobs/{id}``; polling that answers ``202`` with progress
while it runs, then ``200`` with the result or the error's status with the ErrorCode. Every
failure is ``{"error": ErrorCode}``; bad input is always a 4xx.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ErrorCode, SysErrors, ZStackError, err, invalid_argument
from ..identity import REQUIRE_SESSION, SESSION_FREE
from ..mediator import ApiJob
from ..redaction import redact
from ..messages import MessageReply
from ..serialize import unstructure
from .routes import ApiRoute, RouteTable
from .status import status_of

if TYPE_CHECKING:
    from ..node import ManagementNode
    from .schema import SchemaBuilder

__all__ = ["create_app"]

log = logging.getLogger("zstack.http")

_QUERY_PARAMS = ("q", "limit", "start", "sort", "count", "replyWithCount")
# Longest first, so "!?=" is not read as "!" + "?=". ZStack's spellings and the query engine's.
_COND_OPS = ("!?=", "!~=", "?=", "~=", "!=", ">=", "<=", "=", ">", "<")
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(" + "|".join(re.escape(o) for o in _COND_OPS) + r")(.*)$", re.S)
_NULL_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s+(is null|is not null|not null)\s*$", re.I)


# -- responses --------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, ErrorCode):
        return value.to_dict()
    if attrs.has(type(value)):
        return unstructure(value)
    return str(value)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # A host URI or image URL may carry a password: it never leaves in a response.
        return redact(json.dumps(content, default=_json_default, ensure_ascii=False, separators=(",", ":"))).encode()


def error_response(error: ErrorCode, node: ManagementNode | None = None, status: int | None = None) -> JSONResponse:
    code = status or status_of(error, node.error_spaces if node is not None else None)
    headers = {"WWW-Authenticate": 'OAuth realm="zstack"'} if code == 401 else None
    return JSONResponse({"error": error.to_dict()}, status_code=code, headers=headers)


def reply_body(reply: Any) -> Any:
    """A reply as the REST API returns it: its fields, without the (empty) error."""
    data = reply if isinstance(reply, dict) else unstructure(reply)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "error"}
        if "inventories" in data and data.get("total") is None:
            data.pop("total", None)
    return data


# -- request parsing --------------------------------------------------------------------------


def session_of(request: Request) -> str | None:
    """The session UUID from ``Authorization: OAuth <uuid>`` (``Bearer`` accepted too)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("oauth", "bearer") and value.strip():
        return value.strip()
    return header.strip() or "-"  # present but malformed: an invalid session, never "no session"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise invalid_argument(f"the request body is not valid JSON: {exc}", "$") from None
    if not isinstance(data, dict):
        raise invalid_argument(f"the request body must be a JSON object, got {type(data).__name__}", "$")
    return data


def parse_condition(text: str) -> dict[str, Any]:
    """``memorySize>1024`` -> ``{"name": "memorySize", "op": ">", "value": "1024"}``."""
    m = _NULL_COND.match(text)
    if m:
        op = m.group(2).lower()
        return {"name": m.group(1), "op": "is null" if op == "is null" else "is not null"}
    m = _COND.match(text)
    if m is None:
        raise invalid_argument(f"cannot read the query condition {text!r}: write field<op>value with op one of "
                               f"{' '.join(_COND_OPS)} (or 'field is null')", "q")
    name, op, value = m.group(1), m.group(2), m.group(3)
    op = {"?=": "in", "!?=": "not in", "~=": "like", "!~=": "not like"}.get(op, op)
    if op in ("in", "not in"):
        return {"name": name, "op": op, "value": [v for v in value.split(",")]}
    return {"name": name, "op": op, "value": value}


class HttpApi:
    """Turns requests into API calls on ``node``."""

    def __init__(self, node: ManagementNode) -> None:
        self.node = node
        self.table = RouteTable(node)
        self._schemas: SchemaBuilder | None = None
        self._fields_by_api: dict[str, dict[str, Any]] | None = None
        self._openapi: dict[str, Any] | None = None
        self.in_flight = 0
        """API requests being served now; beyond ``api.max_concurrent_requests`` a request is
        refused at once with ``SYS.1005`` (503) instead of queueing without bound."""
        self.max_in_flight = int(node.properties["api.max_concurrent_requests"])

    # The field schemas (and the OpenAPI document) are built when a request first needs them,
    # not at start: that was 5% of the time ``zstack node start`` takes to be ready.

    @property
    def schemas(self) -> SchemaBuilder:
        if self._schemas is None:
            from .schema import SchemaBuilder

            self._schemas = SchemaBuilder()
        return self._schemas

    @property
    def _fields(self) -> dict[str, dict[str, Any]]:
        """API name -> the schemas of its wire fields (to read query and path parameters, and
        for ``/v1/apis``), built for every API at once in registration order, as at start
        before, so schema names are the same whichever request comes first."""
        if self._fields_by_api is None:
            fields: dict[str, dict[str, Any]] = {}
            for route in self.table.by_name.values():
                fields[route.name] = self.schemas.object_schema(route.message).get("properties", {})
            self._fields_by_api = fields
        return self._fields_by_api

    # -- documents ------------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            from .openapi import openapi_document

            self._openapi = openapi_document(self.node, self.table)
        return self._openapi

    def api_list(self) -> list[dict[str, Any]]:
        """``/v1/apis``: what a client needs to call each API (its route and field schemas)."""
        out = []
        for name, route in sorted(self.table.by_name.items()):
            out.append({
                "name": name, "method": route.method, "path": route.path, "longRunning": route.long_running,
                "query": route.is_query, "resource": route.registration.resource, "actionKey": route.action_key,
                "adminOnly": route.registration.admin_only, "fields": self._fields[name],
            })
        return out

    # -- building the message body --------------------------------------------------------

    def _coerce(self, route: ApiRoute, key: str, values: list[str], where: str) -> Any:
        from .schema import coerce_text

        fields = self._fields[route.name]
        schema = fields.get(key)
        if schema is None:
            raise invalid_argument(f"{route.name} has no parameter {key!r}; it takes: {', '.join(fields) or 'none'}",
                                   f"$.{key}")
        try:
            if len(values) > 1:
                kinds = schema.get("type")
                if kinds == "array" or (isinstance(kinds, list) and "array" in kinds):
                    items = schema.get("items", {})
                    return [coerce_text(v, items, self.schemas.components) for v in values]
                raise ValueError(f"given {len(values)} times")
            return coerce_text(values[0], schema, self.schemas.components)
        except ValueError as exc:
            raise invalid_argument(f"{where} {key}: {exc}", f"$.{key}") from None

    def _choose(self, routes: list[ApiRoute], body: Mapping[str, Any] | None, api: str | None) -> ApiRoute:
        if api is not None:
            for r in routes:
                if api in (r.name, r.action_key):
                    return r
            raise SysErrors.exc("1008", f"no API {api!r} on this route; choose one of "
                                        f"{', '.join(r.name for r in routes)}")
        if body is not None:
            keys = [r for r in routes if r.action_key in body]
            if len(keys) == 1:
                return keys[0]
            if len(keys) > 1:
                raise invalid_argument(f"the body names several actions: {', '.join(r.action_key for r in keys)}", "$")
        if len(routes) == 1:
            return routes[0]
        raise invalid_argument("several APIs share this route: name one with its action key, one of "
                               + ", ".join(repr(r.action_key) for r in routes), "$")

    async def select(self, request: Request, routes: list[ApiRoute]) -> tuple[ApiRoute, dict[str, Any] | None]:
        """The API a request calls, and its JSON body (``POST``/``PUT``)."""
        if request.method in ("POST", "PUT"):
            data = await read_json_object(request)
            return self._choose(routes, data, None), data
        return self._choose(routes, None, request.query_params.get("api")), None

    def build_body(self, request: Request, route: ApiRoute, data: dict[str, Any] | None) -> dict[str, Any]:
        """The message body of ``route``'s API from the request."""
        method = "GET" if request.method == "HEAD" else request.method
        body: dict[str, Any] = {}
        if method in ("POST", "PUT"):
            assert data is not None
            for key, value in data.items():
                if key in ("systemTags", "userTags"):
                    body[key] = value
                elif key in ("params", route.action_key):
                    if value is None:
                        continue
                    if not isinstance(value, dict):
                        raise invalid_argument(f"{key} must be a JSON object, got {type(value).__name__}", f"$.{key}")
                    body.update(value)
                else:
                    expected = "params" if method == "POST" else repr(route.action_key)
                    raise invalid_argument(f"unknown key {key!r} in the body; expected {expected}, systemTags, "
                                           "userTags", f"$.{key}")
            query = request.query_params
            if query:
                raise invalid_argument(f"{method} takes its parameters in the JSON body, not the query string",
                                       f"$.{next(iter(query.keys()))}")
        else:
            query = request.query_params
            if route.is_query:
                body = self._query_body(route, query)
            else:
                for key in dict.fromkeys(query.keys()):
                    if key == "api":
                        continue
                    body[key] = self._coerce(route, key, query.getlist(key), "query parameter")
        for i, key in enumerate(route.placeholders):
            text = request.path_params[f"p{i}"]
            value = self._coerce(route, key, [text], "path parameter")
            if key in body and body[key] != value:
                raise invalid_argument(f"{key} is {text!r} in the path but {body[key]!r} in the body", f"$.{key}")
            body[key] = value
        return body

    def _query_body(self, route: ApiRoute, query: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"conditions": [parse_condition(q) for q in query.getlist("q")]}
        for key in dict.fromkeys(query.keys()):
            if key not in _QUERY_PARAMS:
                raise invalid_argument(f"unknown query parameter {key!r}; a query takes {', '.join(_QUERY_PARAMS)} "
                                       f"(conditions as q=name=value)", f"$.{key}")
            if key != "q" and len(query.getlist(key)) > 1:
                raise invalid_argument(f"query parameter {key!r} is given more than once", f"$.{key}")
        if "limit" in query:
            body["limit"] = self._coerce(route, "limit", [query["limit"]], "query parameter")
        if "start" in query:
            body["start"] = self._coerce(route, "start", [query["start"]], "query parameter")
        for key in ("count", "replyWithCount"):
            if key in query:
                body[key] = self._coerce(route, key, [query[key]], "query parameter")
        if "sort" in query:
            sort = query["sort"].strip()
            direction = "desc" if sort.startswith("-") else "asc"
            name = sort.lstrip("+-").strip()
            if not name:
                raise invalid_argument("sort needs a field: sort=+name or sort=-name", "$.sort")
            body["sortBy"], body["sortDirection"] = name, direction
        return body

    # -- endpoints --------------------------------------------------------------------------

    async def call(self, request: Request, routes: list[ApiRoute]) -> Response:
        session = session_of(request)
        try:
            route, data = await self.select(request, routes)
            # The session is checked before the parameters: without one, every API but the
            # session-free ones answers 401 whatever it was sent.
            caller = None
            if not issubclass(route.message, SESSION_FREE):
                if session is None:
                    raise SysErrors.exc("1013", f"{route.name} needs a session: log in with LogInByAccount and "
                                                "send 'Authorization: OAuth <session uuid>'")
                caller = await self.node.services["identity"].resolve(session)
            msg = self.node.api.build(route.name, self.build_body(request, route, data))
        except ZStackError as exc:
            return error_response(exc.error, self.node)
        msg.session_uuid = session
        msg.headers[REQUIRE_SESSION] = True
        if caller is not None:
            msg.headers["account_uuid"] = caller.account_uuid
            msg.headers["account_type"] = caller.account_type
        outcome = await self.node.api.submit(msg)
        if isinstance(outcome, ApiJob):
            location = f"{request.scope.get('root_path', '')}/v1/api-jobs/{outcome.id}"
            return JSONResponse({"location": location, "jobId": outcome.id, "apiName": outcome.api_name},
                                status_code=202, headers={"Location": location})
        assert isinstance(outcome, MessageReply)
        if outcome.error is not None:
            return error_response(outcome.error, self.node)
        return JSONResponse(reply_body(outcome))

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        session = session_of(request)
        if session is None:
            return error_response(err("1013", "polling a job needs the session that started it"), self.node)
        try:
            caller = await self.node.services["identity"].resolve(session)
            wait = wait_seconds(request.query_params["waitSeconds"]) if "waitSeconds" in request.query_params else 0
            job = await self.node.api.jobs.get(job_id) if len(job_id) <= 64 else None
        except ZStackError as exc:
            return error_response(exc.error, self.node)
        if job is None:
            return error_response(err("1009", f"no API job {job_id}"), self.node)
        if not caller.is_admin and job.account_uuid != caller.account_uuid:
            return error_response(err("1012", f"API job {job_id} was started by another account"), self.node)
        if job.state == "Running" and wait:
            # A poll that holds until the job ends (at most waitSeconds): one request per job
            # instead of one every poll interval, and the answer as soon as it is known.
            if await self.node.api.jobs.wait(job.id, wait):
                job = await self.node.api.jobs.get(job_id) or job
        if job.state == "Running":
            location = f"{request.scope.get('root_path', '')}/v1/api-jobs/{job.id}"
            return JSONResponse({"jobId": job.id, "apiName": job.api_name, "state": job.state,
                                 "progress": job.progress}, status_code=202, headers={"Location": location})
        if job.state == "Failed":
            return error_response(job.error or err("1006", f"API job {job_id} failed"), self.node)
        return JSONResponse(reply_body(job.result or {}))


MAX_JOB_WAIT = 30.0
"""The longest a job poll holds (``waitSeconds``), below common proxies' idle timeouts."""


def wait_seconds(text: str) -> float:
    """``waitSeconds`` of a job poll: a number from 0 to :data:`MAX_JOB_WAIT`."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_JOB_WAIT:  # also NaN
        raise invalid_argument(f"waitSeconds must be a number from 0 to {MAX_JOB_WAIT:g}, got {text!r}",
                               "$.waitSeconds")
    return value


def create_app(node: ManagementNode) -> Starlette:
    """The ASGI application serving ``node``'s APIs.

    Build it after the node started (the routes come from the loaded plugins). An embedding
    program can mount it into its own application: ``Mount("/zstack", app=create_app(node))``.
    """
    api = HttpApi(node)

    def endpoint(routes_by_method: dict[str, list[ApiRoute]]) -> Any:
        async def handle(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            if api.in_flight >= api.max_in_flight:  # back-pressure: a clear "busy", before any work
                response = error_response(err("1005", f"{api.in_flight} API requests are being served "
                                                      f"(api.max_concurrent_requests); retry later"), node)
                response.headers["Retry-After"] = "1"
                return response
            api.in_flight += 1
            try:
                return await api.call(request, routes_by_method[method])
            except Exception as exc:  # a bug: say so as an ErrorCode, never a bare traceback
                log.exception("%s %s failed", request.method, request.url.path)
                return error_response(err("1000", f"{type(exc).__name__}: {exc}"), node)
            finally:
                api.in_flight -= 1

        return handle

    async def health(request: Request) -> Response:
        running = node.state == "Running"
        return JSONResponse({"status": "ok" if running else node.state, "state": node.state},
                            status_code=200 if running else 503)

    async def openapi(request: Request) -> Response:
        return JSONResponse(api.openapi())

    async def apis(request: Request) -> Response:
        return JSONResponse({"apis": api.api_list()})

    async def job(request: Request) -> Response:
        try:
            return await api.job(request)
        except Exception as exc:
            log.exception("polling job failed")
            return error_response(err("1000", f"{type(exc).__name__}: {exc}"), node)

    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/openapi.json", openapi, methods=["GET"]),
        Route("/v1/apis", apis, methods=["GET"]),
        Route("/v1/api-jobs/{job_id}", job, methods=["GET"]),
    ]
    reserved = {r.path for r in routes}
    for path in api.table.ordered_paths():
        if path in reserved:
            raise ValueError(f"API route {path} collides with a built-in route of the HTTP API")
        by_method = api.table.paths[path]
        routes.append(Route(path, endpoint(by_method), methods=list(by_method)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            error = err("1008", f"no API at {request.method} {request.url.path}; see /v1/apis")
        elif exc.status_code == 405:
            error = err("1008", f"{request.url.path} does not take {request.method}; it takes "
                                f"{exc.headers.get('Allow', '') if exc.headers else ''}")
        else:
            error = ErrorCode(code="SYS.1007", description="invalid argument", details=str(exc.detail))
        response = error_response(error, node, status=exc.status_code)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.node = node
    app.state.api = api
    from ..cluster.http import install as install_cluster  # node-to-node routes, X-ZStack-Node

    install_cluster(app, node)
    return app

