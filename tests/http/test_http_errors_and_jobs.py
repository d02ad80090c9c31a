"""Long APIs as jobs, and bad input: every refusal is a 4xx with an ErrorCode, never a 5xx."""

from __future__ import annotations

import datetime
import json
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def poll(server: Any, location: str, session: str) -> list[Any]:
    """Poll a job until it ends; returns every response seen."""
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = server.request("GET", location, session)
        seen.append(r)
        if r.status_code != 202:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"job {location} did not end")


def test_long_api_answers_202_then_the_result_with_progress(server: Any) -> None:
    s = server.admin_session
    w = server.create_widget(s, name="long", size=1)
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s,
                       json={"buildWidget": {"steps": 4, "stepSeconds": 0.1}})
    assert r.status_code == 202
    location = r.headers["Location"]
    assert re.fullmatch(r"/v1/api-jobs/[0-9a-f]{32}", location) and r.json()["location"] == location
    seen = poll(server, location, s)
    running = [x.json() for x in seen if x.status_code == 202]
    assert running and all(x["state"] == "Running" and x["apiName"] == "BuildWidget" for x in running)
    progress = [x["progress"] for x in running if x["progress"] is not None]
    assert progress == sorted(progress) and len(set(progress)) >= 2 and max(progress) <= 100
    assert seen[-1].status_code == 200
    assert seen[-1].json()["inventory"]["size"] == 2
    # the finished job keeps answering with its result
    assert server.request("GET", location, s).json()["inventory"]["size"] == 2


def test_failed_job_answers_the_error_with_its_cause_chain(server: Any) -> None:
    s = server.admin_session
    w = server.create_widget(s, name="breaks")
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s,
                       json={"buildWidget": {"steps": 2, "stepSeconds": 0.01, "fail": True}})
    assert r.status_code == 202
    last = poll(server, r.headers["Location"], s)[-1]
    error = last.json()["error"]
    assert error["code"] == "WIDGET.1001" and error["cause"]["code"] == "SYS.1011"
    assert last.status_code == 409  # WIDGET.1001 has no status of its own: its cause's (SYS.1011) is used
    # a long API refused by an interceptor answers at once, without a job
    _, other = server.new_account("other")
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", other, json={"buildWidget": {}})
    assert r.status_code == 403


def test_a_held_poll_answers_when_the_job_ends(server: Any) -> None:
    """``waitSeconds``: the node holds the poll until the job ends and answers with its outcome
    at once, instead of the client asking every poll interval; a hold that runs out answers 202
    as usual."""
    s = server.admin_session
    w = server.create_widget(s, name="held", size=1)
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s,
                       json={"buildWidget": {"steps": 6, "stepSeconds": 0.1}})
    location = r.headers["Location"]
    began = time.monotonic()
    short = server.request("GET", location, s, params={"waitSeconds": "0.2"})
    assert short.status_code == 202 and short.json()["state"] == "Running"
    assert 0.15 <= time.monotonic() - began < 0.55  # held for its 0.2 s, the job still running
    held = server.request("GET", location, s, params={"waitSeconds": "10"})
    took = time.monotonic() - began
    assert held.status_code == 200 and held.json()["inventory"]["size"] == 2
    assert 0.5 <= took < 5  # answered when the 0.6 s job ended, not after 10 s
    again = server.request("GET", location, s, params={"waitSeconds": "10"})  # finished: at once
    assert again.status_code == 200 and again.json()["inventory"]["size"] == 2


@pytest.mark.parametrize("value", ["-1", "31", "nan", "soon", "", "1e400"])
def test_a_bad_wait_is_refused(server: Any, value: str) -> None:
    s = server.admin_session
    w = server.create_widget(s, name=f"bad-wait-{value}")
    r = server.request("PUT", f"/v1/widgets/{w['uuid']}/actions", s, json={"buildWidget": {"steps": 1}})
    bad = server.request("GET", r.headers["Location"], s, params={"waitSeconds": value})
    expect(bad, 400, "SYS.1007", "waitSeconds")


def test_the_sdk_waits_for_a_job_with_few_requests(server: Any) -> None:
    """The SDK's ``call`` holds its polls: a 1 s job costs the POST and one or two polls, where
    polling every 0.2 s took about five."""
    from zstack_core.sdk import Client

    polls = []
    client = Client(server.url, server.admin_session)
    client.http.hooks["response"].append(lambda r, *a, **k: polls.append(r.url) if "/api-jobs/" in r.url else None)
    w = server.create_widget(server.admin_session, name="sdk-held", size=1)
    began = time.monotonic()
    out = client.call("BuildWidget", uuid=w["uuid"], steps=5, stepSeconds=0.2)
    assert out["inventory"]["size"] == 2 and time.monotonic() - began < 5
    assert 1 <= len(polls) <= 2, polls
    client.http.close()


def test_unknown_job(server: Any) -> None:
    r = server.request("GET", "/v1/api-jobs/" + "a" * 32, server.admin_session)
    assert r.status_code == 404 and r.json()["error"]["code"] == "SYS.1009"


def expect(r: Any, status: int, code: str, details: str = "") -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    assert details in error["details"], error


def test_bad_input_answers_4xx_with_an_error_code(server: Any) -> None:
    s = server.admin_session
    w = server.create_widget(s, name="target")
    post = lambda data, **kw: server.request("POST", "/v1/widgets", s, data=data,  # noqa: E731
                                             headers={"Content-Type": "application/json"}, **kw)
    expect(post(b"{not json"), 400, "SYS.1007", "not valid JSON")
    expect(post(b"[1, 2]"), 400, "SYS.1007", "must be a JSON object")
    expect(post(b'{"params": {"name": "x", "size": NaN}}'), 400, "SYS.1007", "not valid JSON")
    expect(post(json.dumps({"params": {"name": "x", "size": "big"}}).encode()), 400, "SYS.1007", "$.size")
    expect(post(json.dumps({"params": {"name": "x", "size": 2**80}}).encode()), 400, "SYS.1007", "$.size")
    expect(post(json.dumps({"params": {"name": 5}}).encode()), 400, "SYS.1007", "$.name")
    expect(post(json.dumps({"params": {"name": "x", "enabled": "yes"}}).encode()), 400, "SYS.1007", "$.enabled")
    expect(post(json.dumps({"params": {"name": "x", "parts": [{"count": 1}]}}).encode()), 400, "SYS.1007", "parts")
    expect(post(json.dumps({"params": {"name": "x", "colour": "red"}}).encode()), 400, "SYS.1007", "colour")
    expect(post(json.dumps({"params": {}, "extra": 1}).encode()), 400, "SYS.1007", "unknown key 'extra'")
    expect(post(json.dumps({"params": "x"}).encode()), 400, "SYS.1007", "params must be a JSON object")
    expect(post(json.dumps({"params": {"name": "x"}, "systemTags": ["nosuch::tag"]}).encode()), 400, "SYS.1007")
    expect(post(json.dumps({"params": {"name": "x"}}).encode(), params={"size": "1"}), 400, "SYS.1007", "query string")
    actions = f"/v1/widgets/{w['uuid']}/actions"
    expect(server.request("PUT", actions, s, json={"explodeWidget": {}}), 400, "SYS.1007", "action key")
    expect(server.request("PUT", actions, s, json={"startWidget": {}, "updateWidget": {}}), 400, "SYS.1007",
           "several actions")
    expect(server.request("PUT", actions, s, json={"updateWidget": {"uuid": "0" * 32}}), 400, "SYS.1007", "in the path")
    # queries
    q = lambda *params: server.request("GET", "/v1/widgets", s, params=list(params))  # noqa: E731
    expect(q(("q", "nosuchfield=1")), 400, "SYS.1007", "nosuchfield")
    expect(q(("q", "size=big")), 400, "SYS.1007")
    expect(q(("q", "size>99999999999999999999999")), 400, "SYS.1007")
    expect(q(("q", "garbage")), 400, "SYS.1007", "cannot read the query condition")
    expect(q(("limit", "-1")), 400, "SYS.1007", "limit")
    expect(q(("limit", "ten")), 400, "SYS.1007", "limit")
    expect(q(("sort", "-nosuch")), 400, "SYS.1007")
    expect(q(("frobnicate", "1")), 400, "SYS.1007", "frobnicate")
    # GET/DELETE parameters are typed by the message
    expect(server.request("GET", f"/v1/widgets/{w['uuid']}/size", s, params={"unit": "B", "bogus": "1"}), 400,
           "SYS.1007", "bogus")
    expect(server.request("DELETE", "/v1/widgets", s, params={"minSize": "lots"}), 400, "SYS.1007", "minSize")
    expect(server.request("DELETE", f"/v1/widgets/{w['uuid']}", s, params={"deleteMode": "Maybe"}), 400, "SYS.1007")
    # unknown APIs and methods
    expect(server.request("GET", "/v1/no-such-things", s), 404, "SYS.1008")
    expect(server.request("PATCH", "/v1/widgets", s), 405, "SYS.1008")
    # sessions: expired, unknown, malformed header
    expect(server.request("GET", "/v1/widgets", "0" * 32), 401, "SYS.1013")
    expect(server.request("GET", "/v1/widgets", headers={"Authorization": "Basic abc"}), 401, "SYS.1013")
    expect(server.request("GET", "/v1/widgets", "x" * 5000), 401, "SYS.1013")
    # nothing changed: the widget is as it was
    r = server.request("GET", "/v1/widgets", s, params={"q": f"uuid={w['uuid']}"})
    assert r.json()["inventories"] == [w]


def test_expired_session_is_refused(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session past its expiry is refused, also one the node has cached (the cache keeps the
    session's expiry and checks it on every use). The node's clock is moved past the expiry."""
    from zstack_core import identity
    from zstack_core.identity import SessionVO

    account, session = server.new_account("expiring")
    assert server.request("GET", "/v1/widgets", session).status_code == 200  # now cached
    expires = server.sync.run(server.node.db.run(lambda: SessionVO.get(SessionVO.uuid == session).expires_at))
    monkeypatch.setattr(identity, "utcnow", lambda: expires + datetime.timedelta(seconds=1))
    expect(server.request("GET", "/v1/widgets", session), 401, "SYS.1013", "expired")


def test_session_expired_behind_the_nodes_back_is_refused_after_the_cache_ttl(
        server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session row changed in the database by something other than this node (another node
    of the cluster that could not tell this one) is read again once its cache entry is
    ``identity.session_cache_ttl`` seconds old: the cache's clock is moved on past it."""
    from zstack_core.identity import SessionVO

    account, session = server.new_account("expiring")
    assert server.request("GET", "/v1/widgets", session).status_code == 200  # now cached
    server.sync.run(server.node.db.run(lambda: SessionVO.update(expires_at=SessionVO.created_at)
                                       .where(SessionVO.uuid == session).execute()))
    identity_service = server.node.services["identity"]
    ttl = float(server.node.properties["identity.session_cache_ttl"])
    assert ttl > 0
    monkeypatch.setattr(identity_service, "session_clock", lambda: time.monotonic() + ttl + 1)
    expect(server.request("GET", "/v1/widgets", session), 401, "SYS.1013", "expired")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_requests_never_get_a_5xx(server: Any, data: st.DataObject) -> None:
    """Random JSON bodies and query strings to every declared route (as admin, and with the
    action keys and field names mixed in so bodies get past the first checks)."""
    routes = sorted({reg.route for reg in server.node.api.registrations.values() if reg.route is not None})
    method, path = data.draw(st.sampled_from(routes))
    names = [n for n, reg in server.node.api.registrations.items() if reg.route == (method, path)]
    keys = st.sampled_from([n[0].lower() + n[1:] for n in names] + ["params", "systemTags", "userTags", "x"])
    inner = st.dictionaries(st.sampled_from(["name", "uuid", "size", "value", "category", "resourceUuid",
                                             "accountName", "password", "l3NetworkUuids", "conditions", "limit"])
                            | st.text(max_size=8), json_values, max_size=4)
    body = data.draw(st.dictionaries(keys, inner | json_values, max_size=3) | json_values)
    filled = re.sub(r"\{[^}]+\}", lambda _: data.draw(st.sampled_from(["0" * 32, "x", "%20", "-1"])), path)
    params = data.draw(st.lists(st.tuples(st.sampled_from(["q", "limit", "start", "sort", "count", "name", "api",
                                                           "deleteMode", "uuid"]),
                                          st.text(max_size=12)), max_size=3))
    kwargs: dict[str, Any] = {"params": params}
    if method in ("POST", "PUT"):
        kwargs["data"] = json.dumps(body)
        kwargs["headers"] = {"Content-Type": "application/json"}
    if not hasattr(server, "fuzz_session"):
        server.fuzz_session = server.login("admin", server.node.properties["identity.admin_password"])
    r = server.request(method, filled, server.fuzz_session, **kwargs)
    if "LogOut" in names or r.status_code == 401:  # the fuzzer may log its own session out
        server.fuzz_session = server.login("admin", server.node.properties["identity.admin_password"])
    assert r.status_code < 500, f"{method} {filled} {kwargs} -> {r.status_code} {r.text}"
    if r.status_code >= 400:
        assert r.json()["error"]["code"]
