"""Nodes on one database (PostgreSQL, MariaDB) find each other, beat, split the ring, find a dead node
within the configured time, fail its jobs, and take it back when it returns."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from zstack_core import ApiJob, ManagementNode, NodeStartError
from zstack_core.cluster import ManagementNodeVO

from .conftest import FAST_BEAT, InProcessCluster, eventually
from .echo_plugin import WhereAmIMsg


async def rows(node: ManagementNode) -> dict[str, ManagementNodeVO]:
    return await node.db.run(lambda: {r.uuid: r for r in ManagementNodeVO.select()})


async def _row_gone(node: ManagementNode, uuid: str) -> bool:
    return uuid not in await rows(node)


async def _beats_past(node: ManagementNode, beats: int) -> bool:
    return (await rows(node))[node.uuid].beats > beats


async def test_nodes_register_beat_and_share_one_ring(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a")
    b = await db_cluster.start("b")
    await db_cluster.settle()
    assert a.cluster.members == b.cluster.members == {a.uuid, b.uuid}
    table = await rows(a)
    assert set(table) == {a.uuid, b.uuid}
    assert {r.state for r in table.values()} == {"Running"}
    assert table[b.uuid].host_name == "127.0.0.1" and table[b.uuid].port == b.http.port
    assert a.cluster.beating and b.cluster.beating
    beats = table[a.uuid].beats
    await eventually(lambda: _beats_past(a, beats), 4 * FAST_BEAT, "a's beat counter moves on its own")
    # every node computes the same owner; both own a share
    probes = [f"{i:032x}" for i in range(400)]
    owners = [a.cluster.owner_of(p) for p in probes]
    assert owners == [b.cluster.owner_of(p) for p in probes]
    assert 100 < owners.count(a.uuid) < 300
    # join hooks: each node was told of its own joining, and the first of the second's
    echo_a, echo_b = db_cluster.echo[a.uuid], db_cluster.echo[b.uuid]
    await eventually(lambda: echo_a.joined == [a.uuid, b.uuid], 2, f"a heard joins {echo_a.joined}")
    await eventually(lambda: echo_b.joined == [b.uuid], 2, f"b heard joins {echo_b.joined}")
    # QueryManagementNode lists them
    reply = await a.api_call("QueryManagementNode")
    assert {inv.uuid for inv in reply.inventories} == {a.uuid, b.uuid}


async def test_a_dead_node_is_found_within_the_detection_time_and_its_jobs_fail(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a")
    b = await db_cluster.start("b")
    await db_cluster.settle()
    gadget = db_cluster.owned_by(b)[0]
    job = await b.submit_api(b.api.build("BrewGadget", {"uuid": gadget, "hang": True}))
    assert isinstance(job, ApiJob)
    await db_cluster.echo[b.uuid].service.brewing.wait()

    await db_cluster.crash(b)
    detection = a.cluster.detection_time
    assert detection == pytest.approx(FAST_BEAT * 3)
    took = await eventually(lambda: b.uuid not in a.cluster.peers, detection + 4 * FAST_BEAT + 1,
                            "a finds b dead")
    assert took >= detection - FAST_BEAT  # not before b really missed its beats
    assert a.cluster.members == {a.uuid}
    assert a.cluster.owns(gadget)
    await eventually(lambda: db_cluster.echo[a.uuid].left == [b.uuid], 2, "zstack_node_left(b) on a")
    await eventually(lambda: _row_gone(a, b.uuid), 2, "b's row removed")

    async def job_failed() -> bool:
        found = await a.api.jobs.get(job.id)
        return found is not None and found.state == "Failed"

    await eventually(job_failed, 2, "b's job ends Failed")
    failed = await a.api.jobs.get(job.id)
    assert failed is not None
    assert failed.error is not None and failed.error.code == "SYS.1006"
    assert failed.error.cause is not None and failed.error.cause.code == "MN.1005"
    assert b.uuid in failed.error.cause.details
    # and work about b's resources is done by the survivor
    reply = await a.bus.call(WhereAmIMsg(gadget_uuid=gadget), resource_uuid=gadget)
    assert reply.success and reply.node_uuid == a.uuid


async def test_a_forward_to_a_dead_node_fails_fast_and_the_ring_moves_at_once(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a")
    b = await db_cluster.start("b")
    await db_cluster.settle()
    gadget = db_cluster.owned_by(b)[0]
    await db_cluster.crash(b)
    start = time.monotonic()
    reply = await a.bus.call(WhereAmIMsg(gadget_uuid=gadget), resource_uuid=gadget)
    assert time.monotonic() - start < 1.0
    assert reply.error is not None and reply.error.code == "MN.1000"
    assert b.uuid in reply.error.details and "not delivered" in reply.error.details
    assert a.cluster.members == {a.uuid}  # before any heartbeat found it dead
    reply = await a.bus.call(WhereAmIMsg(gadget_uuid=gadget), resource_uuid=gadget)
    assert reply.success and reply.node_uuid == a.uuid


async def test_a_stopped_node_leaves_without_waiting_for_detection(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a")
    b = await db_cluster.start("b")
    await db_cluster.settle()
    await b.stop()
    assert b.uuid not in await rows(a)
    await a.cluster.beat()
    assert a.cluster.members == {a.uuid}
    await eventually(lambda: db_cluster.echo[a.uuid].left == [b.uuid], 2, "zstack_node_left(b) on a")


async def test_a_restarted_node_keeps_its_uuid_and_takes_its_resources_back(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a")
    b = await db_cluster.start("b")
    await db_cluster.settle()
    gadgets = db_cluster.owned_by(b, 5)
    await db_cluster.crash(b)
    await eventually(lambda: b.uuid not in a.cluster.members, 5, "b out of a's ring")
    assert all(a.cluster.owns(g) for g in gadgets)
    await b.stop()
    again = await db_cluster.start("b")  # same data directory
    assert again.uuid == b.uuid
    await db_cluster.settle()
    assert a.cluster.members == again.cluster.members == {a.uuid, b.uuid}
    for g in gadgets:
        reply = await a.bus.call(WhereAmIMsg(gadget_uuid=g), resource_uuid=g)
        assert reply.success and reply.node_uuid == b.uuid


async def test_a_node_without_http_owns_nothing_and_forwards(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a")
    b = await db_cluster.start("b")
    c = await db_cluster.start("c", http=False)
    await db_cluster.settle()
    assert c.cluster.members == {a.uuid, b.uuid}
    assert c.uuid not in a.cluster.members
    for g in db_cluster.owned_by(a, 3) + db_cluster.owned_by(b, 3):
        assert not c.cluster.owns(g)
        reply = await c.bus.call(WhereAmIMsg(gadget_uuid=g), resource_uuid=g)
        assert reply.success and reply.node_uuid == a.cluster.owner_of(g)


async def test_a_lone_node_handles_everything(db_cluster: InProcessCluster) -> None:
    a = await db_cluster.start("a", http=False)
    assert a.cluster.members == frozenset()
    g = "f" * 32
    assert a.cluster.owns(g)
    reply = await a.bus.call(WhereAmIMsg(gadget_uuid=g), resource_uuid=g)
    assert reply.success and reply.node_uuid == a.uuid


async def test_a_node_on_sqlite_is_alone_and_does_not_beat(tmp_path: Path) -> None:
    solo = ManagementNode(load_entry_points=False, data_dir=tmp_path / "solo")
    async with solo:
        await solo.start_http("127.0.0.1", 0)
        assert not solo.cluster.beating
        assert solo.cluster.members == {solo.uuid} and solo.cluster.owns("f" * 32)


async def test_a_node_with_another_cluster_secret_does_not_start(pg_url: str, tmp_path: Path) -> None:
    cluster = InProcessCluster(pg_url, tmp_path)
    try:
        await cluster.start("a", settings={"cluster.secret": "s3cret"}, http=False)
        with pytest.raises(NodeStartError, match=r"MN.1002.*cluster.secret differs"):
            await cluster.start("b", settings={"cluster.secret": "other"}, http=False)
        with pytest.raises(NodeStartError, match=r"MN.1002.*set the same cluster.secret"):
            await cluster.start("c", http=False)
        ok = await cluster.start("d", settings={"cluster.secret": "s3cret"}, http=False)
        assert ok.state == "Running"
    finally:
        await cluster.stop()


async def test_node_uuid_is_kept_in_the_data_dir_or_configured(db_cluster: InProcessCluster, tmp_path: Path) -> None:
    a = await db_cluster.start("a", http=False)
    assert (tmp_path / "a" / "node-uuid").read_text().strip() == a.uuid
    fixed = "0123456789abcdef0123456789abcdef"
    b = await db_cluster.start("b", http=False, settings={"cluster.node_uuid": fixed})
    assert b.uuid == fixed and not (tmp_path / "b" / "node-uuid").exists()


async def test_a_configured_node_uuid_must_be_a_uuid(pg_url: str, tmp_path: Path) -> None:
    cluster = InProcessCluster(pg_url, tmp_path)
    try:
        with pytest.raises(NodeStartError, match=r"SYS.1007.*cluster.node_uuid must be 32 lower-case hex digits"):
            await cluster.start("a", http=False, settings={"cluster.node_uuid": "node-1"})
    finally:
        await cluster.stop()
