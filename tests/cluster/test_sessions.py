"""Session caches across nodes: every node caches the sessions it checked (see
:mod:`zstack_core.identity`); a logout or an account deletion on one node reaches the others'
caches through ``SessionsEndedEvent``, not only when their time-to-live runs out."""

from __future__ import annotations

import asyncio
from typing import Any

import requests

from .conftest import InProcessCluster, eventually

PASSWORD = "cluster-test-password"


def _http(method: str, url: str, session: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"OAuth {session}"} if session else {}
    return requests.request(method, url, headers=headers, timeout=10, **kwargs)


async def _login(node_url: str, name: str, password: str) -> str:
    r = await asyncio.to_thread(_http, "PUT", node_url + "/v1/accounts/login",
                                json={"logInByAccount": {"accountName": name, "password": password}})
    assert r.status_code == 200, r.text
    return str(r.json()["inventory"]["uuid"])


async def test_logout_and_account_deletion_on_one_node_reach_the_other_nodes_caches(
        pg_cluster: InProcessCluster) -> None:
    # An hour of time-to-live: only the event can make node b refuse within the test.
    settings = {"identity.admin_password": PASSWORD, "identity.session_cache_ttl": 3600}
    a = await pg_cluster.start("a", settings=settings)
    b = await pg_cluster.start("b", settings=settings)
    await pg_cluster.settle()
    assert a.http is not None and b.http is not None
    gadget = pg_cluster.owned_by(b)[0]

    async def status_on_b(session: str) -> int:
        r = await asyncio.to_thread(_http, "GET", f"{b.http.url}/v1/gadgets/{gadget}", session)  # type: ignore[union-attr]
        return r.status_code

    admin = await _login(a.http.url, "admin", PASSWORD)
    leaving = await _login(a.http.url, "admin", PASSWORD)
    assert await status_on_b(leaving) == 200  # b read it from the database and cached it
    r = await asyncio.to_thread(_http, "DELETE", a.http.url + "/v1/accounts/sessions", leaving)
    assert r.status_code == 200, r.text

    async def refused(session: str) -> bool:
        return await status_on_b(session) == 401

    await eventually(lambda: refused(leaving), 30, "node b refusing the session logged out on node a")

    r = await asyncio.to_thread(_http, "POST", a.http.url + "/v1/accounts", admin,
                                json={"params": {"name": "doomed", "password": "password-doomed"}})
    assert r.status_code == 200, r.text
    account = r.json()["inventory"]["uuid"]
    doomed = await _login(b.http.url, "doomed", "password-doomed")
    assert await status_on_b(doomed) == 200  # cached on b
    r = await asyncio.to_thread(_http, "DELETE", f"{a.http.url}/v1/accounts/{account}", admin)
    assert r.status_code == 200, r.text
    await eventually(lambda: refused(doomed), 30, "node b refusing a session of the account deleted on node a")
    assert await status_on_b(admin) == 200  # other sessions are untouched
