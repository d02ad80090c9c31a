"""Faults: the database unavailable for a while.

A node on PostgreSQL (a server of this package's own: ``pg_server``) serves API calls; the
server is stopped (``pg_ctl stop -m fast``, clients disconnected), and while it is gone every
API call fails fast with ``SYS.1006`` saying the database is unavailable (in-process and over
HTTP, where the node's health stays answered). Then the server starts again and, without
restarting the node, calls succeed again; what was written before the outage is all there and
nothing half-written is left (``zstack check`` finds nothing).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import requests

from zstack_core import ManagementNode, ZStackError
from zstack_core.check import check
from zstack_core.testing import EnvSpec, build_env

from .conftest import ADMIN_PASSWORD, PgServer, driver_xml


async def timed(coro: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    try:
        result: Any = await coro
    except ZStackError as exc:
        result = exc
    return time.monotonic() - t0, result


async def test_apis_fail_fast_while_the_database_is_down_and_recover_without_a_restart(
        pg_server: PgServer, tmp_path: Path) -> None:
    url = driver_xml(tmp_path / "driver.xml")
    node = ManagementNode(data_dir=tmp_path / "node", config={},
                          settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": url,
                                    "database.url": pg_server.url})
    await node.start()
    figures: dict[str, Any] = {}
    try:
        env = await build_env(node, EnvSpec().zone().cluster().host(url=url))
        vm = (await node.api_call("CreateVmInstance", name="before", cpuNum=1, memorySize=64 << 20)).inventory
        http = await node.start_http("127.0.0.1", 0)
        s = requests.Session()
        r = await asyncio.to_thread(s.put, http.url + "/v1/accounts/login", timeout=30,
                                    json={"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}})
        auth = {"Authorization": f"OAuth {r.json()['inventory']['uuid']}"}

        await asyncio.to_thread(pg_server.stop)
        down_at = time.monotonic()
        # In-process: writes and reads both fail, at once, with the database named as the cause.
        latencies = []
        for i in range(5):
            for call in (node.api_call("CreateZone", name=f"during-{i}"), node.query.find("Zone"),
                         node.api_call("StopVmInstance", uuid=vm.uuid)):
                seconds, result = await timed(call)
                latencies.append(seconds)
                assert isinstance(result, ZStackError), result
                assert result.error.caused("SYS.1006") and "database" in str(result.error).lower(), result.error
        # Over HTTP: the ErrorCode in the body, and the node itself still answers.
        t0 = time.monotonic()
        r = await asyncio.to_thread(s.post, http.url + "/v1/zones", json={"params": {"name": "during-http"}},
                                    headers=auth, timeout=30)
        latencies.append(time.monotonic() - t0)
        assert r.status_code in (500, 503) and "SYS.1006" in json.dumps(r.json()), r.text
        health = await asyncio.to_thread(s.get, http.url + "/v1/health", timeout=30)
        assert health.status_code == 200
        figures["max_failure_latency_s"] = round(max(latencies), 3)
        assert max(latencies) < 5.0, latencies  # fail fast: no call waits on a dead server
        await asyncio.sleep(2.0)  # background work (host pings, VM sync, heartbeats) fails meanwhile

        await asyncio.to_thread(pg_server.start)
        up_at = time.monotonic()
        figures["outage_s"] = round(up_at - down_at, 1)
        # Recovery without a restart: the first call after the server is back may still meet a
        # connection the server dropped; within a few seconds every call works again.
        recovered = None
        for attempt in range(100):
            seconds, result = await timed(node.api_call("CreateZone", name="after"))
            if not isinstance(result, ZStackError):
                recovered = time.monotonic() - up_at
                figures["failed_calls_after_restart"] = attempt
                break
            await asyncio.sleep(0.1)
        assert recovered is not None and recovered < 10, figures
        figures["recovery_s"] = round(recovered, 3)
        for i in range(20):  # every database worker thread has its connection back
            await node.api_call("CreateZone", name=f"after-{i}")
            assert len(await node.query.find("Zone", [("name", "=", f"after-{i}")])) == 1
        r = await asyncio.to_thread(s.get, http.url + "/v1/zones", headers=auth, timeout=30)
        assert r.status_code == 200
        names = {z["name"] for z in r.json()["inventories"]}
        assert {"zone", "after"} <= names and not any(n.startswith("during") for n in names)
        # The VM the failed stop calls tried to stop is as it was; nothing is half-written.
        await node.api_call("StopVmInstance", uuid=vm.uuid)
        await node.api_call("StartVmInstance", uuid=vm.uuid)
        report = await check(node)
        assert report.ok, [str(f) for f in report.findings]
        print("\nDB OUTAGE FIGURES", json.dumps(figures))
        _ = env
    finally:
        await node.stop()

