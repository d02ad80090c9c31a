"""Accounts and sessions: the admin account, login, 401 for every API without a session, expiry,
admin-only APIs, passwords kept as slow hashes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from zstack_core import ZStackError
from zstack_core.identity import SESSION_FREE, AccountVO, hash_password, verify_password
from zstack_core.ownership import ADMIN_ACCOUNT_UUID


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "0" * 32, path)


def test_every_api_but_login_answers_401_without_a_session(server: Any) -> None:
    """Enumerated from the registry: whatever plugins are installed, no API runs without a
    session, and the body does not matter (401 comes before parameter checks)."""
    free = {cls.api_name() for cls in SESSION_FREE}
    checked = 0
    for name, reg in sorted(server.node.api.registrations.items()):
        if reg.route is None or name in free:
            continue
        method, path = reg.route
        action = name[0].lower() + name[1:]
        kwargs: dict[str, Any] = {"json": {action: {}}} if method in ("PUT", "POST") else {"params": {"api": name}}
        if method == "POST":
            kwargs = {"json": {"params": {}}} if sum(1 for r in server.node.api.registrations.values()
                                                     if r.route == reg.route) == 1 else {"json": {action: {}}}
        shared_get = sum(1 for r in server.node.api.registrations.values() if r.route == reg.route) > 1
        if method in ("GET", "DELETE") and not shared_get:
            kwargs = {}
        for session in (None, "f" * 32):  # no session, and a session that does not exist
            r = server.request(method, fill(path), session, **kwargs)
            assert r.status_code == 401, f"{name}: {r.status_code} {r.text}"
            assert r.json()["error"]["code"] == "SYS.1013"
            assert r.headers["WWW-Authenticate"].startswith("OAuth")
        checked += 1
    assert checked >= 20
    # the job endpoint needs a session too
    assert server.request("GET", "/v1/api-jobs/" + "0" * 32).status_code == 401


def test_login_wrong_password_and_unknown_account(server: Any) -> None:
    for name, password in (("admin", "wrong"), ("nobody-here", "whatever")):
        r = server.request("PUT", "/v1/accounts/login",
                           json={"logInByAccount": {"accountName": name, "password": password}})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "ID.1000"


def test_sessions_expire_per_the_global_config(server: Any) -> None:
    admin = server.admin_session
    r = server.request("PUT", "/v1/global-configurations/identity/session.timeout/actions", admin,
                       json={"updateGlobalConfig": {"value": 1}})
    assert r.status_code == 200
    try:
        short = server.login("admin", server.node.properties["identity.admin_password"])
        assert server.request("GET", "/v1/widgets", short).status_code == 200
        time.sleep(1.2)
        r = server.request("GET", "/v1/widgets", short)
        assert r.status_code == 401 and r.json()["error"]["code"] == "SYS.1013"
        r = server.request("GET", f"/v1/accounts/sessions/{short}/valid")
        assert r.json() == {"valid": False, "expiredDate": None}
    finally:
        server.request("PUT", "/v1/global-configurations/identity/session.timeout/actions", admin,
                       json={"resetGlobalConfig": {}})


def test_logout_ends_the_session(server: Any) -> None:
    _, session = server.new_account("leaving")
    r = server.request("GET", f"/v1/accounts/sessions/{session}/valid")
    assert r.json()["valid"] is True and r.json()["expiredDate"].endswith("Z")
    assert server.request("DELETE", "/v1/accounts/sessions", session).status_code == 200
    assert server.request("GET", "/v1/widgets", session).status_code == 401
    assert server.request("GET", f"/v1/accounts/sessions/{session}/valid").json()["valid"] is False


def test_logout_refuses_a_cached_session_at_once(server: Any) -> None:
    """The node caches sessions it checked; logging out drops the session from the cache, so
    the very next request with it is refused (no time-to-live to wait out)."""
    _, session = server.new_account("cached")
    for _ in range(3):  # the first reads the database and caches it, the others use the cache
        assert server.request("GET", "/v1/widgets", session).status_code == 200
    assert server.request("DELETE", "/v1/accounts/sessions", session).status_code == 200
    r = server.request("GET", "/v1/widgets", session)
    assert r.status_code == 401 and r.json()["error"]["code"] == "SYS.1013"


def test_deleting_an_account_refuses_its_cached_sessions_at_once(server: Any) -> None:
    name = f"doomed-{uuid.uuid4().hex[:8]}"
    r = server.request("POST", "/v1/accounts", server.admin_session,
                       json={"params": {"name": name, "password": "password-" + name}})
    assert r.status_code == 200, r.text
    account = r.json()["inventory"]["uuid"]
    first, second = server.login(name, "password-" + name), server.login(name, "password-" + name)
    for session in (first, second):
        assert server.request("GET", "/v1/widgets", session).status_code == 200  # cached
    assert server.request("DELETE", f"/v1/accounts/{account}", server.admin_session).status_code == 200
    for session in (first, second):
        r = server.request("GET", "/v1/widgets", session)
        assert r.status_code == 401 and r.json()["error"]["code"] == "SYS.1013"
    assert server.request("GET", "/v1/widgets", server.admin_session).status_code == 200  # others unaffected


def test_a_session_ended_on_another_node_is_dropped_when_its_event_arrives(server: Any) -> None:
    """Another node of the cluster ends a session (its row is gone) and publishes
    ``SessionsEndedEvent``; arriving here (as the cluster delivers peers' events: to local
    subscribers only), it drops the session from this node's cache at once."""
    from zstack_core.identity import SessionsEndedEvent, SessionVO

    _, session = server.new_account("elsewhere")
    assert server.request("GET", "/v1/widgets", session).status_code == 200  # cached
    server.sync.run(server.node.db.run(lambda: SessionVO.delete().where(SessionVO.uuid == session).execute()))
    server.node.bus.publish(SessionsEndedEvent(session_uuids=[session]), local_only=True)
    r = server.request("GET", "/v1/widgets", session)
    assert r.status_code == 401 and r.json()["error"]["code"] == "SYS.1013"


def test_accounts_admin_only_and_self_update(server: Any) -> None:
    account, session = server.new_account("normal")
    # a normal account cannot create or delete accounts, nor run admin-only APIs
    r = server.request("POST", "/v1/accounts", session, json={"params": {"name": "x-" + account, "password": "secret12"}})
    assert r.status_code == 403 and r.json()["error"]["code"] == "SYS.1012"
    r = server.request("DELETE", "/v1/widgets", session, params={"minSize": "1"})
    assert r.status_code == 403
    r = server.request("PUT", "/v1/global-configurations/identity/session.timeout/actions", session,
                       json={"updateGlobalConfig": {"value": 5}})
    assert r.status_code == 403
    # it sees itself only, and may change its own password
    r = server.request("GET", "/v1/accounts", session)
    assert [a["uuid"] for a in r.json()["inventories"]] == [account]
    r = server.request("PUT", f"/v1/accounts/{account}/actions", session,
                       json={"updateAccount": {"password": "a-new-password"}})
    assert r.status_code == 200
    name = r.json()["inventory"]["name"]
    assert server.login(name, "a-new-password")
    # ... but not the admin's
    r = server.request("PUT", f"/v1/accounts/{ADMIN_ACCOUNT_UUID}/actions", session,
                       json={"updateAccount": {"password": "hijacked!"}})
    assert r.status_code == 403
    # duplicate names and the admin account's deletion are refused
    r = server.request("POST", "/v1/accounts", server.admin_session, json={"params": {"name": name, "password": "secret12"}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "SYS.1015"
    r = server.request("DELETE", f"/v1/accounts/{ADMIN_ACCOUNT_UUID}", server.admin_session)
    assert r.status_code == 409 and r.json()["error"]["code"] == "ID.1001"
    # an account that owns resources cannot be deleted; once they are gone it can, with its sessions
    w = server.create_widget(session, name="mine")
    r = server.request("DELETE", f"/v1/accounts/{account}", server.admin_session)
    assert r.status_code == 409 and r.json()["error"]["code"] == "ID.1002"
    assert server.request("DELETE", f"/v1/widgets/{w['uuid']}", session).status_code == 200
    assert server.request("DELETE", f"/v1/accounts/{account}", server.admin_session).status_code == 200
    assert server.request("GET", "/v1/widgets", session).status_code == 401


def test_passwords_are_stored_as_salted_scrypt_hashes(server: Any) -> None:
    rows = server.sync.run(server.node.db.run(lambda: [(r.name, r.password_hash) for r in AccountVO.select()]))
    admin_hash = dict(rows)["admin"]
    assert admin_hash.startswith("scrypt$") and "admin-password" not in admin_hash
    assert verify_password(server.node.properties["identity.admin_password"], admin_hash)
    assert not verify_password("wrong", admin_hash)
    assert hash_password("same") != hash_password("same")  # salted


def test_in_process_calls_without_a_session_act_as_admin(server: Any) -> None:
    reply = server.sync.api_call("CreateWidget", name="embedded")
    uuid = reply.inventory.uuid
    r = server.request("GET", "/v1/widgets", server.admin_session, params={"q": f"uuid={uuid}"})
    assert len(r.json()["inventories"]) == 1
    _, session = server.new_account("other")
    assert server.request("GET", "/v1/widgets", session, params={"q": f"uuid={uuid}"}).json()["inventories"] == []
    # an in-process call that does carry a session is checked like an HTTP one
    with pytest.raises(ZStackError) as info:
        server.sync.api_call("CreateWidget", name="x", session_uuid="f" * 32)
    assert info.value.code == "SYS.1013"


# Each node below runs in a process of its own: the models' database proxy is process-wide, so a
# second node in this process would take the session-wide test node's database away.
_START_AND_LOGIN = """
import asyncio, sys
from zstack_core import ManagementNode

async def main():
    async with ManagementNode(data_dir=sys.argv[1], load_entry_points=False) as node:
        if len(sys.argv) > 2:
            reply = await node.api_call("LogInByAccount", accountName="admin", password=sys.argv[2])
            print("logged in as", reply.inventory.account_uuid)

asyncio.run(main())
"""


def start_node(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")} | (env or {})
    return subprocess.run([sys.executable, "-c", _START_AND_LOGIN, str(data_dir), *args], capture_output=True,
                          text=True, timeout=60, env=environ)


def test_admin_password_generated_and_printed_once(tmp_path: Path) -> None:
    first = start_node(tmp_path)
    assert first.returncode == 0, first.stderr
    match = re.search(r"generated password is: (\S+)", first.stderr)
    assert match, first.stderr
    second = start_node(tmp_path, match.group(1))
    assert second.returncode == 0, second.stderr
    assert f"logged in as {ADMIN_ACCOUNT_UUID}" in second.stdout
    assert "password" not in second.stderr  # only the first start prints it


def test_admin_password_from_the_environment(tmp_path: Path) -> None:
    result = start_node(tmp_path, "from-the-env", env={"ZSTACK_ADMIN_PASSWORD": "from-the-env"})
    assert result.returncode == 0, result.stderr
    assert "logged in as" in result.stdout and "generated" not in result.stderr
