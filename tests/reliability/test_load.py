"""Load: thousands of concurrent API calls over HTTP, none lost, none applied twice; a saturated
node answers "busy" (``SYS.1005``, 503, ``Retry-After``) at once instead of queueing without
bound, and its memory stays bounded.

The heavy test runs the node as its own process (``zstack node start``) and sends 10,000
``CreateZone`` calls, each with a name of its own, from 10,000 asyncio tasks over 1,000
keep-alive connections. A call refused as busy is retried after a short pause (a refusal is
made before anything is done, so retrying cannot apply a call twice). At the end every call has
succeeded once, the database holds exactly one zone per name, and the figures (duration,
latencies, refusals, the node's RSS) are printed for RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import APIEvent, APIMessage, ApiRegistration, ManagementNode, Service, handles, hookimpl

from .conftest import ADMIN_PASSWORD
from .nodeproc import HttpConnection, NodeProcess, rss_kib

# -- back-pressure, in the default run ----------------------------------------------------------


@attrs.define(kw_only=True)
class APISlowMsg(APIMessage):
    """Takes ``seconds`` to answer (a stand-in for an API stuck on a slow host)."""

    SERVICE_ID = "slow"
    seconds: float = 0.5


class SlowService(Service):
    id = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    @handles(APISlowMsg)
    async def slow(self, msg: APISlowMsg) -> APIEvent:
        await asyncio.sleep(msg.seconds)
        self.served += 1
        return APIEvent()


class SlowPlugin:
    def __init__(self) -> None:
        self.service = SlowService()

    @hookimpl
    def zstack_services(self) -> list[Service]:
        return [self.service]

    @hookimpl
    def zstack_api_messages(self) -> list[ApiRegistration]:
        return [ApiRegistration(message=APISlowMsg, route=("POST", "/v1/slow"))]


async def test_a_saturated_node_answers_busy_at_once(tmp_path: Path) -> None:
    plugin = SlowPlugin()
    node = ManagementNode(data_dir=tmp_path, config={}, plugins=[plugin], load_entry_points=False,
                          settings={"identity.admin_password": ADMIN_PASSWORD, "api.max_concurrent_requests": 4})
    async with node:
        http = await node.start_http("127.0.0.1", 0)
        conns = [HttpConnection("127.0.0.1", http.port) for _ in range(12)]
        status, _, body = await conns[0].request("PUT", "/v1/accounts/login",
                                                 {"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}})
        auth = {"Authorization": f"OAuth {body['inventory']['uuid']}"}
        started = time.monotonic()

        async def call(conn: HttpConnection) -> tuple[int, dict[str, str], Any, float]:
            t0 = time.monotonic()
            status, headers, body = await conn.request("POST", "/v1/slow", {"params": {"seconds": 1.0}}, auth)
            return status, headers, body, time.monotonic() - t0

        results = await asyncio.gather(*(call(c) for c in conns))
        ok = [r for r in results if r[0] == 200]
        busy = [r for r in results if r[0] == 503]
        assert len(ok) == 4 and len(busy) == 8 and plugin.service.served == 4
        for _, headers, body, seconds in busy:
            assert body["error"]["code"] == "SYS.1005" and "api.max_concurrent_requests" in body["error"]["details"]
            assert headers["retry-after"] == "1"
            assert seconds < 0.5  # refused at once, not after waiting for a slot
        assert time.monotonic() - started < 3
        health = await conns[0].request("GET", "/v1/health")  # health is never refused
        assert health[0] == 200
        # Once the calls in flight are done, the node serves again.
        status, _, _ = await conns[1].request("POST", "/v1/slow", {"params": {"seconds": 0.0}}, auth)
        assert status == 200 and node.http.app.state.api.in_flight == 0
        for c in conns:
            await c.close()


# -- 10,000 calls against a node process --------------------------------------------------------


@attrs.define
class LoadFigures:
    calls: int
    connections: int
    limit: int
    seconds: float
    busy_answers: int
    max_latency: float
    p50_latency: float
    p99_latency: float
    rss_before_kib: int
    rss_after_kib: int
    peak_rss_kib: int


async def load(url_port: int, session: str, names: list[str], connections: int) -> tuple[list[float], int]:
    """Every name created once: each task takes a connection from the pool, retries on 503."""
    pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(HttpConnection("127.0.0.1", url_port))
    auth = {"Authorization": f"OAuth {session}"}
    latencies: list[float] = []
    busy = 0

    async def create(name: str) -> None:
        nonlocal busy
        while True:
            conn = await pool.get()
            t0 = time.monotonic()
            try:
                status, _, body = await conn.request("POST", "/v1/zones", {"params": {"name": name}}, auth)
            finally:
                pool.put_nowait(conn)
            latencies.append(time.monotonic() - t0)
            if status == 503:
                assert body["error"]["code"] == "SYS.1005", body
                busy += 1
                await asyncio.sleep(0.25)  # a well-behaved client backs off (Retry-After says 1 s)
                continue
            assert status == 200 and body["inventory"]["name"] == name, (status, body)
            return

    await asyncio.gather(*(create(n) for n in names))
    while not pool.empty():
        await pool.get_nowait().close()
    return latencies, busy


@pytest.mark.heavy
async def test_ten_thousand_concurrent_calls_none_lost_none_twice(tmp_path: Path) -> None:
    calls, connections, limit = 10_000, 1_000, 256
    node = NodeProcess(tmp_path / "node", env={"ZSTACK_IDENTITY_ADMIN_PASSWORD": ADMIN_PASSWORD,
                                                "ZSTACK_API_MAX_CONCURRENT_REQUESTS": str(limit),
                                                "ZSTACK_NODE_LIBVIRT_URI": "test:///default"}).start()
    try:
        conn = HttpConnection("127.0.0.1", node.port)
        _, _, body = await conn.request("PUT", "/v1/accounts/login",
                                        {"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}})
        session = body["inventory"]["uuid"]
        await conn.close()
        await asyncio.sleep(1.0)
        rss_before, _ = rss_kib(node.pid)
        names = [f"load-zone-{i:05d}" for i in range(calls)]
        started = time.monotonic()
        latencies, busy = await load(node.port, session, names, connections)
        seconds = time.monotonic() - started
        rss_after, peak = rss_kib(node.pid)
        # Every call applied exactly once, as the database tells.
        db = sqlite3.connect(str(tmp_path / "node" / "zstack.db"))
        rows = db.execute("SELECT name, COUNT(*) FROM zone WHERE name LIKE 'load-zone-%' GROUP BY name").fetchall()
        db.close()
        assert len(rows) == calls and all(n == 1 for _, n in rows)
        assert sorted(name for name, _ in rows) == names
        latencies.sort()
        figures = LoadFigures(calls=calls, connections=connections, limit=limit, seconds=round(seconds, 1),
                              busy_answers=busy, max_latency=round(latencies[-1], 3),
                              p50_latency=round(latencies[len(latencies) // 2], 3),
                              p99_latency=round(latencies[int(len(latencies) * 0.99)], 3),
                              rss_before_kib=rss_before, rss_after_kib=rss_after, peak_rss_kib=peak)
        print("\nLOAD FIGURES", json.dumps(attrs.asdict(figures)))
        assert busy > 0  # 1,000 connections against 256 slots: the node said busy rather than queue
        # Bounded: what was admitted is at most `limit` requests; the node's memory does not
        # grow with the 10,000 calls (a queue of them all would).
        assert peak - rss_before < 200 * 1024, figures
        assert latencies[-1] < 30, figures  # no call waited past the client's patience
    finally:
        node.stop()
