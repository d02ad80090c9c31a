"""A Normal account sees and acts on its own resources only (and uses what is shared with it);
admin sees all. The query and action APIs are enumerated from the registry."""

from __future__ import annotations

import re
from typing import Any

import attrs

from zstack_core.identity import SESSION_FREE, resource_fields
from zstack_core.query import APIQueryMessage


def dummy(schema: dict[str, Any]) -> Any:
    """A value of the schema's type, for required fields that are not resource UUIDs."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "array": [], "object": {}}.get(kind, "x")


def test_queries_show_only_the_callers_resources(server: Any) -> None:
    alice_account, alice = server.new_account("alice")
    _, bob = server.new_account("bob")
    w = server.create_widget(alice, name="alice-widget")
    r = server.request("POST", "/v1/system-tags", alice, json={"params": {"resourceUuid": w["uuid"], "tag": "color::blue"}})
    assert r.status_code == 200, r.text
    tag_uuid = r.json()["inventory"]["uuid"]
    alice_owned = {w["uuid"], tag_uuid, alice_account}
    queries = [(name, reg.route[1]) for name, reg in server.node.api.registrations.items()
               if issubclass(reg.message, APIQueryMessage) and reg.route is not None]
    assert len(queries) >= 4
    seen_by_admin: set[str] = set()
    for name, path in queries:
        r = server.request("GET", path, bob, params={"limit": "10000"})
        assert r.status_code == 200, (name, r.text)
        uuids = {i.get("uuid") for i in r.json()["inventories"]} | {i.get("resourceUuid") for i in r.json()["inventories"]}
        assert not (uuids & alice_owned), f"{name} shows alice's resources to bob"
        r = server.request("GET", path, server.admin_session, params={"limit": "10000"})
        seen_by_admin |= {i.get("uuid") for i in r.json()["inventories"]}
        r = server.request("GET", path, alice, params={"limit": "10000"})
        for inv in r.json()["inventories"]:
            assert inv.get("uuid") is None or "category" in inv or inv["uuid"] in alice_owned or \
                inv.get("resourceUuid") in alice_owned, (name, inv)
    assert alice_owned <= seen_by_admin  # admin sees all


def test_no_action_api_touches_another_accounts_resource(server: Any) -> None:
    """Every API with a resource field, called by bob with alice's widget in it, is refused with
    SYS.1012 and changes nothing."""
    _, alice = server.new_account("alice")
    _, bob = server.new_account("bob")
    w = server.create_widget(alice, name="precious", size=7)
    free = {cls.api_name() for cls in SESSION_FREE}
    apis = {a["name"]: a for a in server.request("GET", "/v1/apis").json()["apis"]}
    checked = []
    for name, reg in sorted(server.node.api.registrations.items()):
        fields = resource_fields(reg.message)
        if reg.route is None or name in free or not fields or apis[name]["adminOnly"]:
            continue
        info = apis[name]
        params: dict[str, Any] = {}
        required = {attrs.fields_dict(reg.message)[f].name for f in attrs.fields_dict(reg.message)
                    if attrs.fields_dict(reg.message)[f].default is attrs.NOTHING}
        for attr, is_list, _ in fields:
            params[attr] = [w["uuid"]] if is_list else w["uuid"]
        for key, schema in info["fields"].items():
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
            if snake in required and snake not in params:
                params[snake] = dummy(schema)
        wire = {re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), k): v for k, v in params.items()}
        method, path = info["method"], info["path"]
        for placeholder in re.findall(r"\{([^}]+)\}", path):
            path = path.replace("{" + placeholder + "}", str(wire.pop(placeholder, "0" * 32)))
        shared = sum(1 for a in apis.values() if (a["method"], a["path"]) == (info["method"], info["path"])) > 1
        if method == "POST":
            kwargs: dict[str, Any] = {"json": {info["actionKey"] if shared else "params": wire}}
        elif method == "PUT":
            kwargs = {"json": {info["actionKey"]: wire}}
        else:
            import json

            kwargs = {"params": {k: v if isinstance(v, str) else json.dumps(v) for k, v in wire.items()}
                      | ({"api": name} if shared else {})}
        r = server.request(method, path, bob, **kwargs)
        assert r.status_code == 403, f"{name}: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == "SYS.1012"
        checked.append(name)
    assert {"UpdateWidget", "StartWidget", "DeleteWidget", "GetWidgetSize", "BuildWidget", "LinkWidget",
            "CreateSystemTag", "UpdateAccount"} <= set(checked)
    r = server.request("GET", "/v1/widgets", alice, params={"q": f"uuid={w['uuid']}"})
    assert r.json()["inventories"] == [w]  # unchanged


def test_shared_resources_are_visible_and_usable_not_changeable(server: Any) -> None:
    _, alice = server.new_account("alice")
    bob_account, bob = server.new_account("bob")
    shared = server.create_widget(alice, name="shared")
    mine = server.create_widget(bob, name="bobs")
    # bob cannot share alice's widget
    r = server.request("PUT", "/v1/accounts/resources/actions", bob,
                       json={"shareResource": {"resourceUuids": [shared["uuid"]], "accountUuids": [bob_account]}})
    assert r.status_code == 403
    r = server.request("PUT", "/v1/accounts/resources/actions", alice,
                       json={"shareResource": {"resourceUuids": [shared["uuid"]], "accountUuids": [bob_account]}})
    assert r.status_code == 200, r.text
    r = server.request("GET", "/v1/widgets", bob)
    assert {i["uuid"] for i in r.json()["inventories"]} == {shared["uuid"], mine["uuid"]}
    # using it (a reference field) is allowed; acting on it is not
    r = server.request("PUT", f"/v1/widgets/{mine['uuid']}/actions", bob,
                       json={"linkWidget": {"linkedWidgetUuid": shared["uuid"]}})
    assert r.status_code == 200 and r.json()["inventory"]["linkedUuid"] == shared["uuid"]
    r = server.request("PUT", f"/v1/widgets/{shared['uuid']}/actions", bob, json={"startWidget": {}})
    assert r.status_code == 403
    assert server.request("DELETE", f"/v1/widgets/{shared['uuid']}", bob).status_code == 403
    # revoked: gone from bob's view and no longer usable
    r = server.request("PUT", "/v1/accounts/resources/actions", alice,
                       json={"revokeResourceSharing": {"resourceUuids": [shared["uuid"]], "all": True}})
    assert r.status_code == 200
    assert {i["uuid"] for i in server.request("GET", "/v1/widgets", bob).json()["inventories"]} == {mine["uuid"]}
    r = server.request("PUT", f"/v1/widgets/{mine['uuid']}/actions", bob,
                       json={"linkWidget": {"linkedWidgetUuid": shared["uuid"]}})
    assert r.status_code == 403


def test_another_accounts_job_cannot_be_read(server: Any) -> None:
    _, alice = server.new_account("alice")
    _, bob = server.new_account("bob")
    w = server.create_widget(alice, name="built")
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", alice, json={"buildWidget": {"steps": 1}})
    assert r.status_code == 202
    location = r.headers["Location"]
    assert server.request("GET", location, bob).status_code == 403
    assert server.request("GET", location, server.admin_session).status_code in (200, 202)
