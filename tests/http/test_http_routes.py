"""Every declared route is served and documented; requests map to API messages as ZStack's do."""

from __future__ import annotations

import re
from typing import Any

import pytest

from zstack_core.identity import SESSION_FREE

FAKE_UUID = "0" * 32


def routed(server: Any) -> list[tuple[str, str, str]]:
    """``(api name, method, path)`` of every registered API that declares a route."""
    return sorted((name, reg.route[0].upper(), reg.route[1])
                  for name, reg in server.node.api.registrations.items() if reg.route is not None)


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", FAKE_UUID, path)


def server_admin_password(server: Any) -> str:
    return str(server.node.properties["identity.admin_password"])


def minimal_request(server: Any, name: str, method: str, path: str) -> dict[str, Any]:
    """Keyword arguments for ``server.request`` that reach ``name`` with an empty body."""
    shared = [n for n, m, p in routed(server) if (m, p) == (method, path)]
    if method == "POST":
        return {"json": {"params": {}} if len(shared) == 1 else {name[0].lower() + name[1:]: {}}}
    if method == "PUT":
        return {"json": {name[0].lower() + name[1:]: {}}}
    return {"params": {"api": name}} if len(shared) > 1 else {}


def test_the_node_declares_routes_from_every_plugin(server: Any) -> None:
    names = {name for name, _, _ in routed(server)}
    # the kernel's own APIs, the identity APIs, the test plugin's, and a generated query per resource
    assert {"UpdateGlobalConfig", "CreateSystemTag", "QueryGlobalConfig", "QuerySystemTag", "LogInByAccount",
            "CreateAccount", "QueryAccount", "CreateWidget", "StartWidget", "BuildWidget", "QueryWidget"} <= names
    unrouted = [n for n, reg in server.node.api.registrations.items() if reg.route is None]
    assert unrouted == [], f"APIs without a REST route cannot be called over HTTP: {unrouted}"


def test_every_route_is_in_the_openapi_document(server: Any) -> None:
    r = server.request("GET", "/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    from zstack_core.http.routes import template

    documented = {template(p): p for p in doc["paths"]}
    for name, method, path in routed(server):
        # paths differing only in placeholder names are one URL pattern, documented once
        doc_path = documented.get(template(path), "")
        operation = doc["paths"].get(doc_path, {}).get(method.lower())
        assert operation is not None, f"{name}: {method} {path} missing from the OpenAPI document"
        assert name in operation["x-zstack-apis"]
        for placeholder in re.findall(r"\{([^}]+)\}", doc_path):
            assert any(p["in"] == "path" and p["name"] == placeholder for p in operation["parameters"]), (name, placeholder)
    # every $ref points at a schema the document defines
    text = r.text
    for ref in set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], ref


@pytest.mark.parametrize("kind", ["every"])
def test_every_route_answers(server: Any, kind: str) -> None:
    """With a session and an empty body, each route reaches its API: the answer is the API's own
    (an invalid-argument 400, a not-found 404 with SYS.1004...), never a routing miss, a 405 or
    a 5xx."""
    problems = []
    session = server.login("admin", server_admin_password(server))
    for name, method, path in routed(server):
        r = server.request(method, fill(path), session, **minimal_request(server, name, method, path))
        if name == "LogOut":  # it ended this session, as asked
            session = server.login("admin", server_admin_password(server))
        body = r.json()
        if r.status_code >= 500 or r.status_code == 405 or (r.status_code == 404 and body["error"]["code"] == "SYS.1008"):
            problems.append(f"{name} {method} {path} -> {r.status_code} {body}")
        elif r.status_code >= 400:
            assert "error" in body and body["error"]["code"], (name, body)
    assert problems == []


def test_openapi_schemas_follow_the_message_fields(server: Any) -> None:
    doc = server.request("GET", "/v1/openapi.json").json()
    schemas = doc["components"]["schemas"]
    create = schemas["APICreateWidgetMsg"]
    props = create["properties"]
    assert props["name"] == {"type": "string"}
    assert props["size"] == {"type": "integer"}
    assert props["weight"] == {"type": "number"}
    assert props["enabled"] == {"type": "boolean"}
    assert props["labels"] == {"type": "array", "items": {"type": "string"}}
    assert props["parts"] == {"type": "array", "items": {"$ref": "#/components/schemas/WidgetPart"}}
    assert props["spec"] == {"type": "object", "additionalProperties": {}}
    assert props["note"] == {"type": ["string", "null"]}
    assert props["extra"] == {}
    assert create["required"] == ["name"]
    assert "sessionUuid" not in props and "headers" not in props and "id" not in props
    assert schemas["WidgetPart"]["required"] == ["name"]
    assert schemas["WidgetInventory"]["properties"]["linkedUuid"] == {"type": ["string", "null"]}
    # the POST body wraps the fields in "params"; the reply is the event's inventory
    post = doc["paths"]["/v1/widgets"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"params", "systemTags", "userTags"}
    assert body["properties"]["params"]["required"] == ["name"]
    ok = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["properties"]["inventory"] == {"anyOf": [{"$ref": "#/components/schemas/WidgetInventory"},
                                                       {"type": "null"}]}
    # APIs sharing a PUT path: one body per action key
    put = doc["paths"]["/v1/widgets/{uuid}/actions"]["put"]
    keys = {next(iter(b["properties"])) for b in put["requestBody"]["content"]["application/json"]["schema"]["oneOf"]}
    assert keys == {"updateWidget", "startWidget", "linkWidget", "buildWidget"}
    assert "202" in put["responses"]  # BuildWidget is long
    # queries: q/limit/start/sort/count parameters and inventories of the resource
    query = doc["paths"]["/v1/widgets"]["get"]
    assert {p["name"] for p in query["parameters"]} == {"q", "limit", "start", "sort", "count", "replyWithCount"}
    items = query["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["inventories"]["items"]
    assert items == {"$ref": "#/components/schemas/WidgetInventory"}
    # the session-free APIs say so; the rest inherit the document's session requirement
    assert doc["paths"]["/v1/accounts/login"]["put"]["security"] == []
    assert "security" not in doc["paths"]["/v1/widgets"]["post"]
    assert doc["security"] == [{"session": []}]


def test_apis_table_lists_routes_for_clients(server: Any) -> None:
    apis = {a["name"]: a for a in server.request("GET", "/v1/apis").json()["apis"]}
    assert set(apis) == {name for name, _, _ in routed(server)}
    assert apis["BuildWidget"] | {"fields": None} == {
        "name": "BuildWidget", "method": "PUT", "path": "/v1/widgets/{uuid}/actions", "longRunning": True,
        "query": False, "resource": "Widget", "actionKey": "buildWidget", "adminOnly": False, "fields": None}
    assert apis["QueryWidget"]["query"] is True
    assert apis["PurgeWidgets"]["adminOnly"] is True


def test_create_action_get_delete_and_query(server: Any) -> None:
    s = server.admin_session
    r = server.request("POST", "/v1/widgets", s, json={"params": {"name": "alpha", "size": 2048, "weight": 1.5,
                                                                   "parts": [{"name": "gear", "count": 2}]},
                                                        "systemTags": ["color::red"]})
    assert r.status_code == 200, r.text
    w = r.json()["inventory"]
    assert w["name"] == "alpha" and w["size"] == 2048 and w["state"] == "Stopped"
    # an action chosen by its key among the APIs sharing the path
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s, json={"startWidget": {}})
    assert r.status_code == 200 and r.json()["inventory"]["state"] == "Running"
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s, json={"startWidget": {}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "WIDGET.1000"  # the plugin's http_status
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s, json={"updateWidget": {"name": "beta"}})
    assert r.json()["inventory"]["name"] == "beta"
    # GET with typed query parameters and a path placeholder
    r = server.request("GET", f"/v1/widgets/{w['uuid']}/size", s, params={"unit": "KiB"})
    assert r.status_code == 200 and r.json() == {"size": 2048, "unit": "KiB"}
    # queries: conditions as q=, ZStack's operators, sort, limit, count
    for size in (1, 3000, 5000):
        server.create_widget(s, name=f"q-{size}", size=size)
    r = server.request("GET", "/v1/widgets", s, params=[("q", "size>1024"), ("q", "name~=q-%"), ("sort", "-size")])
    assert [i["size"] for i in r.json()["inventories"]][:2] == [5000, 3000]
    assert all(i["name"].startswith("q-") and i["size"] > 1024 for i in r.json()["inventories"])
    r = server.request("GET", "/v1/widgets", s, params=[("q", f"uuid?={w['uuid']},{FAKE_UUID}")])
    assert [i["uuid"] for i in r.json()["inventories"]] == [w["uuid"]]
    r = server.request("GET", "/v1/widgets", s, params=[("q", "name=q-1"), ("count", "true")])
    assert r.json() == {"inventories": [], "total": 1}
    r = server.request("GET", "/v1/widgets", s, params=[("q", "name~=q-%"), ("limit", "1"), ("replyWithCount", "true")])
    assert len(r.json()["inventories"]) == 1 and r.json()["total"] >= 3
    r = server.request("GET", "/v1/widgets", s, params=[("q", "linkedUuid is null"), ("q", "name=beta")])
    assert [i["uuid"] for i in r.json()["inventories"]] == [w["uuid"]]
    r = server.request("GET", "/v1/system-tags", s, params=[("q", f"resourceUuid={w['uuid']}")])
    assert [t["tag"] for t in r.json()["inventories"]] == ["color::red"]
    # DELETE with a mode
    r = server.request("DELETE", f"/v1/widgets/{w['uuid']}", s, params={"deleteMode": "Enforcing"})
    assert r.status_code == 200
    r = server.request("GET", f"/v1/widgets/{w['uuid']}/size", s)
    assert r.status_code == 404 and r.json()["error"]["code"] == "SYS.1004"


def test_kernel_apis_over_http(server: Any) -> None:
    s = server.admin_session
    r = server.request("PUT", "/v1/global-configurations/identity/session.timeout/actions", s,
                       json={"updateGlobalConfig": {"value": 3600}})
    assert r.status_code == 200 and r.json()["inventory"]["value"] == "3600"
    r = server.request("GET", "/v1/global-configurations/identity/session.timeout/options", s)
    assert r.json()["options"]["type"] == "int"
    r = server.request("PUT", "/v1/global-configurations/identity/session.timeout/actions", s,
                       json={"resetGlobalConfig": {}})
    assert r.json()["inventory"]["value"] == "7200"
    r = server.request("GET", "/v1/global-configs", s, params=[("q", "category=identity")])
    assert [c["name"] for c in r.json()["inventories"]] == ["session.timeout"]


def test_health_needs_no_session(server: Any) -> None:
    r = server.request("GET", "/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_the_app_mounts_into_another_asgi_app(server: Any) -> None:
    """An embedding program mounts the API under a prefix of its own ASGI app; job locations
    follow the prefix."""
    import requests
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from zstack_core.http import HttpServer, create_app

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the embedding program")

    outer = Starlette(routes=[Route("/", home), Mount("/cloud", app=create_app(server.node))])
    http = server.sync.run(HttpServer(server.node, "127.0.0.1", 0, app=outer).start())
    try:
        w = server.create_widget(server.admin_session, name="mounted")
        headers = {"Authorization": f"OAuth {server.admin_session}"}
        assert requests.get(http.url + "/", timeout=10).text == "the embedding program"
        r = requests.put(f"{http.url}/cloud/v1/widgets/{w['uuid']}/actions", json={"buildWidget": {"steps": 1}},
                         headers=headers, timeout=10)
        assert r.status_code == 202 and r.headers["location"].startswith("/cloud/v1/api-jobs/")
        r = requests.get(http.url + "/cloud/v1/health", timeout=10)
        assert r.json()["status"] == "ok"
    finally:
        server.sync.run(http.stop())


def test_session_free_apis_are_login_and_validate(server: Any) -> None:
    assert {cls.api_name() for cls in SESSION_FREE} == {"LogInByAccount", "ValidateSession"}
