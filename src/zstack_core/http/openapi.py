"""The OpenAPI 3.1 document of the node, generated from the installed plugins.

Each route of the :class:`~zstack_core.http.routes.RouteTable` becomes an operation; message,
reply and inventory attrs classes become JSON Schemas under ``components/schemas``. The reply
class of an API is its registration's ``reply`` or the return annotation of the service handler.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from ..errors import ErrorCode
from .routes import ApiRoute, RouteTable
from .schema import SchemaBuilder

if TYPE_CHECKING:
    from ..node import ManagementNode

__all__ = ["openapi_document", "reply_class"]

_BASE_FIELDS = ("systemTags", "userTags")


def reply_class(node: ManagementNode, route: ApiRoute) -> type[Any] | None:
    """The reply class of ``route``'s API, if it can be known without calling it."""
    if route.registration.reply is not None:
        return route.registration.reply
    service = node.services.get(route.registration.service_id)
    if service is None:
        return None
    handlers = service.handlers()
    for klass in route.message.__mro__:
        handler = handlers.get(klass)
        if handler is not None:
            try:
                hint = typing.get_type_hints(handler).get("return")
            except Exception:  # annotations naming TYPE_CHECKING-only types
                return None
            options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            return options[0] if isinstance(options[0], type) else None
    return None


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def openapi_document(node: ManagementNode, table: RouteTable) -> dict[str, Any]:
    from .. import __version__

    schemas = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for tpl in table.ordered_paths():
        item: dict[str, Any] = {}
        by_method = table.paths[tpl]
        path = min(r.path for routes in by_method.values() for r in routes)  # named as its APIs name it
        for method, routes in sorted(by_method.items()):
            item[method.lower()] = _operation(node, schemas, path, method, routes)
        paths[path] = item
    paths.update(_builtin_paths())
    schemas.ref(ErrorCode)
    components = dict(schemas.components)
    components["ErrorResponse"] = {
        "type": "object", "properties": {"error": {"$ref": "#/components/schemas/ErrorCode"}}, "required": ["error"]}
    components["ApiJob"] = {
        "type": "object",
        "properties": {"jobId": {"type": "string"}, "apiName": {"type": "string"}, "location": {"type": "string"},
                       "state": {"enum": ["Running"]}, "progress": {"type": ["integer", "null"]}},
        "required": ["jobId"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ZStack management node API", "version": __version__,
                 "description": "Generated from the API messages of the installed plugins. Log in with "
                                "PUT /v1/accounts/login and send 'Authorization: OAuth <session uuid>'."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"session": {"type": "apiKey", "in": "header", "name": "Authorization",
                                            "description": "OAuth <session uuid> (from LogInByAccount)"}},
        },
        "security": [{"session": []}],
    }


def _operation(node: ManagementNode, schemas: SchemaBuilder, path: str, method: str,
               routes: list[ApiRoute]) -> dict[str, Any]:
    from ..identity import SESSION_FREE

    names = [r.name for r in routes]
    first = routes[0]
    placeholders = _placeholders(path)
    op: dict[str, Any] = {
        "operationId": names[0] if len(names) == 1 else "_or_".join(names),
        "summary": ", ".join(names),
        "tags": sorted({r.registration.resource or "misc" for r in routes}),
        "x-zstack-apis": names,
    }
    docs = [f"{r.name}: {(r.message.__doc__ or '').strip()}" for r in routes if (r.message.__doc__ or "").strip()
            and not (r.message.__doc__ or "").strip().startswith(r.message.__name__ + "(")]
    if docs:
        op["description"] = "\n\n".join(docs)
    if all(issubclass(r.message, SESSION_FREE) for r in routes):
        op["security"] = []
    message_schemas = {r.name: schemas.object_schema(r.message) for r in routes}
    for r in routes:
        schemas.ref(r.message)
    params: list[dict[str, Any]] = []
    for i, name in enumerate(placeholders):
        own = first.placeholders[i] if i < len(first.placeholders) else name
        field = message_schemas[first.name]["properties"].get(own, {"type": "string"})
        params.append({"name": name, "in": "path", "required": True, "schema": field})
    if method in ("GET", "DELETE"):
        if first.is_query:
            params += [
                {"name": "q", "in": "query", "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string"}},
                 "description": "a condition: name=value, name!=value, name>1, name>=1, name<1, name<=1, "
                                "name?=a,b (in), name!?=a,b (not in), name~=%x% (like), name!~=%x%, "
                                "'name is null', 'name is not null'; repeat for AND"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "sort", "in": "query", "schema": {"type": "string"}, "description": "+field or -field"},
                {"name": "count", "in": "query", "schema": {"type": "boolean"}},
                {"name": "replyWithCount", "in": "query", "schema": {"type": "boolean"}},
            ]
        else:
            seen = set(placeholders) | {p for r in routes for p in r.placeholders}
            for r in routes:
                for key, field in message_schemas[r.name]["properties"].items():
                    if key in seen:
                        continue
                    seen.add(key)
                    required = key in message_schemas[r.name].get("required", []) and len(routes) == 1
                    params.append({"name": key, "in": "query", "required": required, "schema": field})
            if len(routes) > 1:
                params.append({"name": "api", "in": "query", "required": True, "schema": {"enum": names}})
    else:
        bodies = []
        for r in routes:
            msg_schema = message_schemas[r.name]
            props = {k: v for k, v in msg_schema["properties"].items()
                     if k not in r.placeholders and k not in _BASE_FIELDS}
            required = [k for k in msg_schema.get("required", []) if k in props]
            inner: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
            if required:
                inner["required"] = required
            key = "params" if method == "POST" and len(routes) == 1 else r.action_key
            body: dict[str, Any] = {
                "type": "object",
                "properties": {key: inner, "systemTags": {"type": "array", "items": {"type": "string"}},
                               "userTags": {"type": "array", "items": {"type": "string"}}},
                "additionalProperties": False,
            }
            if required or len(routes) > 1:  # several APIs on one route: the key chooses
                body["required"] = [key]
            bodies.append(body)
        schema = bodies[0] if len(bodies) == 1 else {"oneOf": bodies}
        op["requestBody"] = {"required": method == "PUT", "content": {"application/json": {"schema": schema}}}
    if params:
        op["parameters"] = params
    responses: dict[str, Any] = {}
    ok: list[dict[str, Any]] = []
    for r in routes:  # APIs sharing a route often share their reply: list each schema once
        schema = _reply_schema(node, schemas, r)
        if not r.long_running and schema not in ok:
            ok.append(schema)
    if ok:
        responses["200"] = {"description": "the reply",
                            "content": {"application/json": {"schema": ok[0] if len(ok) == 1 else {"anyOf": ok}}}}
    if any(r.long_running for r in routes):
        responses["202"] = {"description": "the API runs as a job: poll the Location",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiJob"}}}}
    responses["4XX"] = _error_response("refused: the ErrorCode says why (400 invalid argument, 401 session, "
                                       "403 permission, 404 not found, 409 conflict)")
    responses["5XX"] = _error_response("the server failed: the ErrorCode and its cause say why")
    op["responses"] = responses
    return op


def _placeholders(path: str) -> list[str]:
    import re

    return re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", path)


def _reply_schema(node: ManagementNode, schemas: SchemaBuilder, route: ApiRoute) -> dict[str, Any]:
    if route.is_query:
        resource = node.query.resources.get(route.message.RESOURCE)
        items = schemas.ref(resource.inventory) if resource is not None else {}
        return {"type": "object", "properties": {"inventories": {"type": "array", "items": items},
                                                 "total": {"type": "integer"}}}
    cls = reply_class(node, route)
    if cls is None:
        return {"type": "object"}
    schema = schemas.object_schema(cls)
    schema["properties"].pop("error", None)
    if "required" in schema:
        schema["required"] = [k for k in schema["required"] if k != "error"]
    return schema


def _builtin_paths() -> dict[str, Any]:
    def simple(op_id: str, summary: str, secured: bool = False) -> dict[str, Any]:
        op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": ["node"],
                              "responses": {"200": {"description": "OK",
                                                    "content": {"application/json": {"schema": {"type": "object"}}}}}}
        if not secured:
            op["security"] = []
        return op

    job = simple("GetApiJob", "the state of a long API's job; 202 while it runs, then its result or error", True)
    job["parameters"] = [
        {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "waitSeconds", "in": "query", "required": False,
         "description": "hold the poll until the job ends, at most this long (0-30 s)",
         "schema": {"type": "number", "minimum": 0, "maximum": 30}},
    ]
    job["responses"]["202"] = {"description": "still running",
                               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiJob"}}}}
    job["responses"]["4XX"] = _error_response("no such job, no session, or another account's job")
    job["responses"]["5XX"] = _error_response("the job failed on the server side")
    return {
        "/v1/health": {"get": simple("Health", "whether the node is running (no session needed)")},
        "/v1/openapi.json": {"get": simple("OpenApi", "this document")},
        "/v1/apis": {"get": simple("ListApis", "every API with its route and field schemas")},
        "/v1/api-jobs/{job_id}": {"get": job},
    }
