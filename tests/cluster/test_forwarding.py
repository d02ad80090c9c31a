"""Work about a resource is done by its owner: messages and APIs forwarded over HTTP with replies
and ErrorCodes intact, events reaching every node, config changes reaching every node, and a
node-to-node endpoint that refuses whoever lacks the cluster secret."""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import requests

from zstack_core import ApiJob, ManagementNode
from zstack_core.cluster import wire
from zstack_core.globalconfig import GlobalConfigVO

from .conftest import FAST_BEAT, InProcessCluster, eventually
from .echo_plugin import GadgetChangedEvent, RunThereMsg, WhereAmIMsg, WhereAmIReply

PASSWORD = "cluster-test-password"


async def two(pg_cluster: InProcessCluster) -> tuple[ManagementNode, ManagementNode]:
    settings = {"identity.admin_password": PASSWORD}
    a = await pg_cluster.start("a", settings=settings)
    b = await pg_cluster.start("b", settings=settings)
    await pg_cluster.settle()
    return a, b


async def test_a_message_about_a_resource_is_handled_by_its_owner(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    theirs, ours = pg_cluster.owned_by(b)[0], pg_cluster.owned_by(a)[0]
    msg = WhereAmIMsg(gadget_uuid=theirs, text="héllo")
    msg.headers["account_uuid"] = "a" * 32
    reply = await a.bus.call(msg, resource_uuid=theirs)
    assert isinstance(reply, WhereAmIReply) and reply.success
    assert (reply.node_uuid, reply.text, reply.account_uuid) == (b.uuid, "héllo", "a" * 32)
    assert reply.handled_at == datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
    assert reply.forwarded_from == a.uuid
    assert pg_cluster.echo[b.uuid].service.handled == [theirs]
    local = await a.bus.call(WhereAmIMsg(gadget_uuid=ours), resource_uuid=ours)
    assert local.node_uuid == a.uuid and local.forwarded_from is None
    # without a resource UUID the bus never forwards
    plain = await a.bus.call(WhereAmIMsg(gadget_uuid=theirs))
    assert plain.node_uuid == a.uuid


async def test_an_error_comes_back_with_its_cause_chain(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    theirs = pg_cluster.owned_by(b)[0]
    reply = await a.bus.call(WhereAmIMsg(gadget_uuid=theirs, fail=True), resource_uuid=theirs)
    assert reply.error is not None
    assert (reply.error.code, reply.error.details) == ("ECHO.1000", f"gadget {theirs} says no")
    assert reply.error.cause is not None and reply.error.cause.code == "ECHO.1001"
    assert reply.error.cause.opaque == {"part": "spring"}


async def test_a_message_that_cannot_travel_is_refused_before_sending(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    theirs = pg_cluster.owned_by(b)[0]
    reply = await a.bus.call(RunThereMsg(gadget_uuid=theirs, fn=lambda: None), resource_uuid=theirs)
    assert reply.error is not None and reply.error.code == "MN.1003"
    assert "RunThereMsg cannot be sent" in reply.error.details


async def test_an_api_about_a_resource_is_answered_by_its_owner(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    theirs, ours = pg_cluster.owned_by(b)[0], pg_cluster.owned_by(a)[0]
    assert (await a.api_call("GetGadget", uuid=theirs)).node_uuid == b.uuid
    assert (await a.api_call("GetGadget", uuid=ours)).node_uuid == a.uuid
    # a long API: the job lives on a, its message runs on b
    job = await a.submit_api(a.api.build("BrewGadget", {"uuid": theirs}))
    assert isinstance(job, ApiJob)
    done = await a.api.wait_job(job.id, timeout=10)
    assert done.state == "Succeeded" and done.result is not None
    assert done.result["nodeUuid"] == b.uuid


def _http(method: str, url: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, url, timeout=10, **kwargs)


async def test_http_api_names_the_node_that_answered(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    assert a.http is not None
    login = await asyncio.to_thread(_http, "PUT", a.http.url + "/v1/accounts/login",
                                    json={"logInByAccount": {"accountName": "admin", "password": PASSWORD}})
    assert login.status_code == 200, login.text
    session = {"Authorization": f"OAuth {login.json()['inventory']['uuid']}"}
    for owner in (a, b):
        gadget = pg_cluster.owned_by(owner)[0]
        r = await asyncio.to_thread(_http, "GET", f"{a.http.url}/v1/gadgets/{gadget}", headers=session)
        assert r.status_code == 200, r.text
        assert r.json()["nodeUuid"] == owner.uuid
        assert r.headers["X-ZStack-Node"] == owner.uuid


async def test_events_reach_subscribers_on_every_node(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    at = datetime.datetime(2024, 1, 2, 3, 4, 5)
    a.bus.publish(GadgetChangedEvent(gadget_uuid="1" * 32, origin=a.uuid, at=at))
    b.bus.publish(GadgetChangedEvent(gadget_uuid="2" * 32, origin=b.uuid))
    echo_a, echo_b = pg_cluster.echo[a.uuid].service, pg_cluster.echo[b.uuid].service
    await eventually(lambda: len(echo_a.events) == 2 and len(echo_b.events) == 2, 3, "events everywhere")
    got = {e.gadget_uuid: e for e in echo_b.events}
    assert got["1" * 32].origin == a.uuid and got["1" * 32].at == at
    assert {e.origin for e in echo_a.events} == {a.uuid, b.uuid}
    await asyncio.sleep(3 * FAST_BEAT)
    assert len(echo_a.events) == len(echo_b.events) == 2  # delivered once, never echoed back


async def test_a_config_change_reaches_every_node(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    await a.api_call("UpdateGlobalConfig", category="managementServer", name="node.heartbeatMissedLimit", value=5)
    took = await eventually(lambda: b.configs.get("managementServer", "node.heartbeatMissedLimit") == 5,
                            FAST_BEAT * 2, "b sees the change")
    assert took < FAST_BEAT * 2
    assert ("managementServer", "node.heartbeatMissedLimit", 3, 5, None) in pg_cluster.echo[b.uuid].config_changes
    # a change that reached the database but whose nudge was lost: found at the next heartbeat
    await a.db.run(lambda: GlobalConfigVO.update(value="7").where(
        (GlobalConfigVO.category == "managementServer") & (GlobalConfigVO.name == "node.heartbeatMissedLimit")).execute())
    for node in (a, b):
        await eventually(lambda: node.configs.get("managementServer", "node.heartbeatMissedLimit") == 7,
                         FAST_BEAT * 2 + 0.5, "every node reads it at its next beat")
        assert node.cluster.detection_time == FAST_BEAT * 7


async def test_the_node_to_node_endpoint_refuses_requests_without_the_secret(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    assert b.http is not None
    theirs = pg_cluster.owned_by(b)[0]
    body = wire.encode_message(WhereAmIMsg(gadget_uuid=theirs), "echo", 10.0, a.uuid)
    url = b.http.url + "/v1/cluster/messages"
    plain = {"Content-Type": "application/json"}
    for headers in (plain, {**plain, wire.SIGNATURE_HEADER: "0" * 64},
                    {**plain, wire.SIGNATURE_HEADER: wire.sign(b"not-the-secret", body)}):
        r = await asyncio.to_thread(_http, "POST", url, data=body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "MN.1002"
    assert pg_cluster.echo[b.uuid].service.handled == []  # never dispatched
    # a signed request whose body was changed on the way is refused too
    signed = {**plain, wire.SIGNATURE_HEADER: a.cluster.sign(body)}
    r = await asyncio.to_thread(_http, "POST", url, data=body.replace(b"echo", b"ECHO"), headers=signed)
    assert r.status_code == 401
    r = await asyncio.to_thread(_http, "POST", url, data=body, headers=signed)
    assert r.status_code == 200, r.text
    assert wire.verify(a.cluster._secret, r.content, r.headers[wire.SIGNATURE_HEADER])  # noqa: SLF001
    assert json.loads(r.content)["body"]["nodeUuid"] == b.uuid
    assert pg_cluster.echo[b.uuid].service.handled == [theirs]


async def test_only_message_types_registered_here_are_accepted(pg_cluster: InProcessCluster) -> None:
    a, b = await two(pg_cluster)
    assert b.http is not None
    for path in ("os:system", "subprocess:Popen", "zstack_core.messages:NeedReplyMessage"):
        body = json.dumps({"type": path, "service": "echo", "body": {}}).encode()
        r = await asyncio.to_thread(_http, "POST", b.http.url + "/v1/cluster/messages", data=body,
                                    headers={wire.SIGNATURE_HEADER: a.cluster.sign(body)})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "MN.1004"
