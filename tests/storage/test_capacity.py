"""Capacity accounting: reservations never overdraw a host (not even when racing, on SQLite and
PostgreSQL), every byte comes back exactly, and the database refuses a negative value."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import zstack_storage.plugin
from zstack_core import ManagementNode, ZStackError
from zstack_core.db import new_uuid
from zstack_storage import capacity
from zstack_storage.models import LocalStorageHostRefVO, PrimaryStorageVO

MiB = 1 << 20


@pytest.fixture(params=["sqlite", "postgresql"])
async def node(request: pytest.FixtureRequest, data_dir: Path) -> AsyncIterator[ManagementNode]:
    settings = {}
    if request.param == "postgresql":
        settings["database.url"] = request.getfixturevalue("postgres_url")
    async with ManagementNode(plugins=[zstack_storage.plugin], load_entry_points=False, data_dir=data_dir,
                              settings=settings) as n:
        yield n


async def make_ps(node: ManagementNode, hosts: dict[str, int]) -> str:
    ps = new_uuid()

    def make() -> None:
        PrimaryStorageVO.create(uuid=ps, name="ps", zone_uuid=new_uuid(), type="LocalStorage", url=f"/x/{ps}")
        for host, total in hosts.items():
            capacity.set_host_capacity_sync(ps, host, total, total)

    await node.db.atomic(make)
    return ps


async def figures(node: ManagementNode, ps: str) -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
    def load() -> tuple[tuple[int, int], dict[str, tuple[int, int]]]:
        row = PrimaryStorageVO.get(PrimaryStorageVO.uuid == ps)
        refs = LocalStorageHostRefVO.select().where(LocalStorageHostRefVO.primary_storage_uuid == ps)
        return (row.total_capacity, row.available_capacity), {r.host_uuid: (r.total_capacity, r.available_capacity)
                                                               for r in refs}

    return await node.db.run(load)


async def test_racing_reservations_never_overdraw_and_all_come_back(node: ManagementNode) -> None:
    host = new_uuid()
    ps = await make_ps(node, {host: 100 * MiB})

    async def reserve() -> bool:
        return await node.db.atomic(capacity.reserve_sync, ps, host, 3 * MiB, 10 * MiB)

    results = await asyncio.gather(*(reserve() for _ in range(40)))
    assert results.count(True) == 30  # (100 - 10 held back) / 3
    (total, available), refs = await figures(node, ps)
    assert (total, available) == (100 * MiB, 10 * MiB) and refs[host] == (100 * MiB, 10 * MiB)
    await asyncio.gather(*(node.db.atomic(capacity.return_sync, ps, host, 3 * MiB) for _ in range(30)))
    assert await figures(node, ps) == ((100 * MiB, 100 * MiB), {host: (100 * MiB, 100 * MiB)})


async def test_random_reserves_and_returns_keep_the_books_exact(node: ManagementNode) -> None:
    hosts = {new_uuid(): 64 * MiB, new_uuid(): 32 * MiB}
    ps = await make_ps(node, hosts)
    rng = random.Random(20240501)
    held: dict[str, list[int]] = {h: [] for h in hosts}
    for _ in range(150):
        host = rng.choice(list(hosts))
        if held[host] and rng.random() < 0.4:
            size = held[host].pop(rng.randrange(len(held[host])))
            await node.db.atomic(capacity.return_sync, ps, host, size)
        else:
            size = rng.randrange(0, 12 * MiB)
            ok = await node.db.atomic(capacity.reserve_sync, ps, host, size, MiB)
            assert ok == (hosts[host] - sum(held[host]) - size >= MiB)
            if ok:
                held[host].append(size)
        (total, available), refs = await figures(node, ps)
        for h, (t, a) in refs.items():
            assert t - a == sum(held[h]) and a >= 0
        assert (total, available) == (sum(t for t, _ in refs.values()), sum(a for _, a in refs.values()))


async def test_a_grown_disk_keeps_reservations_and_a_removed_host_leaves_the_sums(node: ManagementNode) -> None:
    a, b = new_uuid(), new_uuid()
    ps = await make_ps(node, {a: 50 * MiB, b: 50 * MiB})
    assert await node.db.atomic(capacity.reserve_sync, ps, a, 20 * MiB, 0)
    await node.db.atomic(capacity.set_host_capacity_sync, ps, a, 80 * MiB, 70 * MiB)  # reconnect: bigger disk
    (total, available), refs = await figures(node, ps)
    assert refs[a] == (80 * MiB, 60 * MiB) and (total, available) == (130 * MiB, 110 * MiB)
    await node.db.atomic(capacity.remove_host_sync, ps, a)
    assert await figures(node, ps) == ((50 * MiB, 50 * MiB), {b: (50 * MiB, 50 * MiB)})
    await node.db.atomic(capacity.return_sync, ps, a, 20 * MiB)  # the host is gone: nothing to return to
    assert await figures(node, ps) == ((50 * MiB, 50 * MiB), {b: (50 * MiB, 50 * MiB)})


async def test_the_database_refuses_negative_capacity(node: ManagementNode) -> None:
    host = new_uuid()
    ps = await make_ps(node, {host: MiB})
    H = LocalStorageHostRefVO
    with pytest.raises(ZStackError) as info:
        await node.db.atomic(lambda: H.update(available_capacity=H.available_capacity - 2 * MiB).where(
            H.host_uuid == host).execute())
    assert info.value.code == "SYS.1015"
    with pytest.raises(ValueError):
        await node.db.atomic(capacity.reserve_sync, ps, host, -1, 0)
    assert await figures(node, ps) == ((MiB, MiB), {host: (MiB, MiB)})
