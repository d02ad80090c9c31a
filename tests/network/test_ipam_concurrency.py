"""Concurrent allocators never collide.

* Hundreds of asyncio tasks on one node allocate from a range smaller than their number: every
  address of the range is handed out exactly once, the rest are refused with ``L3.1002``.
* Two OS processes, each running its own management node on one database (an SQLite file, then
  a throwaway PostgreSQL), allocate from one small range at the same moment: no address twice,
  and together exactly the range's size. What keeps them apart is the database's unique key on
  ``(l3_network_uuid, ip_int)`` (and on the MAC), not anything in one process's memory.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import zstack_network.plugin
from zstack_core import ManagementNode
from zstack_core.header.messages import AllocateVmNicMsg
from zstack_network.models import UsedIpVO, VmNicVO

from .conftest import make_l3


@pytest.mark.parametrize("strategy", ["FirstAvailable", "Random"])
async def test_hundreds_of_tasks_on_one_node(net_node: ManagementNode, strategy: str) -> None:
    async def api(name: str, /, **params: Any) -> Any:
        return await net_node.api_call(name, params)

    _, l3, rng = await make_l3(api, cidr="10.30.0.0/24", strategy=strategy)  # 253 addresses: .2-.254
    size = 253
    tasks = 300
    started = time.perf_counter()
    replies = await asyncio.gather(*(net_node.bus.call(AllocateVmNicMsg(vm_instance_uuid=f"{i:032x}",
                                                                        l3_network_uuid=l3.uuid))
                                     for i in range(tasks)))
    elapsed = time.perf_counter() - started
    ok = [r.nic for r in replies if r.error is None]
    refused = [r.error for r in replies if r.error is not None]
    assert len(ok) == size
    assert {e.code for e in refused} == {"L3.1002"} and len(refused) == tasks - size
    ips = [n.ip for n in ok]
    assert len(set(ips)) == size
    assert set(ips) == {f"10.30.0.{i}" for i in range(2, 255)}
    assert len({n.mac for n in ok}) == size
    rows = await net_node.db.run(lambda: (UsedIpVO.select().count(), VmNicVO.select().count()))
    assert rows == (size, size)  # refused allocations left neither an address nor a NIC
    print(f"\n{tasks} concurrent allocations ({strategy}) on one node: {elapsed:.2f}s, "
          f"{elapsed / tasks * 1000:.1f} ms each")


CHILD = textwrap.dedent("""
    import asyncio, json, os, sys, time
    import zstack_network.plugin
    from zstack_core import ManagementNode
    from zstack_core.header.messages import AllocateVmNicMsg
    from zstack_network import ipam

    url, data_dir, l3_uuid, go_file, name = sys.argv[1:6]

    async def worker(node, k):
        got = []
        for i in range(10_000):
            reply = await node.bus.call(AllocateVmNicMsg(vm_instance_uuid=f"{name}{k:04d}{i:04d}".ljust(32, "0")[:32],
                                                         l3_network_uuid=l3_uuid), timeout=120)
            if reply.error is not None:
                if reply.error.code == "L3.1002":
                    return got
                raise RuntimeError(str(reply.error))
            got.append([reply.nic.ip, reply.nic.mac])
        return got

    async def main():
        async with ManagementNode(plugins=[zstack_network.plugin], load_entry_points=False, data_dir=data_dir,
                                  settings={"database.url": url}) as node:
            print("ready", flush=True)
            while not os.path.exists(go_file):
                await asyncio.sleep(0.005)
            began = time.time()
            results = await asyncio.gather(*(worker(node, k) for k in range(8)))
            ended = time.time()
        print(json.dumps({"got": [x for r in results for x in r], "clashes": ipam.STATS["clashes"],
                          "window": [began, ended]}), flush=True)

    asyncio.run(main())
""")


async def _two_processes(url: str, tmp_path: Path, cidr: str, size: int) -> tuple[list[list[str]], list[int]]:
    data = tmp_path / "parent"
    async with ManagementNode(plugins=[zstack_network.plugin], load_entry_points=False, data_dir=data,
                              settings={"database.url": url}) as node:
        async def api(name: str, /, **params: Any) -> Any:
            return await node.api_call(name, params)

        _, l3, _ = await make_l3(api, cidr=cidr, physical_interface=f"p{time.time_ns() % 10**8}")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, str(tmp_path / name), l3.uuid, str(go), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    try:
        for p in procs:  # both nodes are up before either allocates
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
        go.write_text("go")
        outs = [await asyncio.to_thread(p.communicate, timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    ips = [ip for r in results for ip, _ in r["got"]]
    macs = [mac for r in results for _, mac in r["got"]]
    assert len(ips) == size, (len(ips), size)
    assert len(set(ips)) == size
    assert len(set(macs)) == size
    # The two allocation phases overlapped in time, so the uniqueness above held under real
    # contention. (Which process wins how many is up to the database: SQLite's busy handler is not
    # fair, and on a loaded machine one writer can take the whole range while the other waits.)
    (a_began, a_ended), (b_began, b_ended) = (r["window"] for r in results)
    assert max(a_began, b_began) < min(a_ended, b_ended), "the processes did not allocate at the same time"
    async with ManagementNode(plugins=[zstack_network.plugin], load_entry_points=False, data_dir=data,
                              settings={"database.url": url}) as node:
        rows = await node.db.run(lambda: [ip for (ip,) in UsedIpVO.select(UsedIpVO.ip)
                                          .where(UsedIpVO.l3_network_uuid == l3.uuid).tuples()])
    assert sorted(rows) == sorted(ips)
    return [r["got"] for r in results], [r["clashes"] for r in results]


async def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    got, clashes = await _two_processes(url, tmp_path, "10.31.0.0/26", 61)
    print(f"\nSQLite, two processes: {len(got[0])} + {len(got[1])} addresses, {sum(clashes)} clashes retried")


async def test_two_processes_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    got, clashes = await _two_processes(postgres_url, tmp_path, "10.32.0.0/26", 61)
    print(f"\nPostgreSQL, two processes: {len(got[0])} + {len(got[1])} addresses, {sum(clashes)} clashes retried")
