"""A host's libvirt calls run side by side on its worker threads (``kvm/host.libvirtWorkers``),
its pings in a thread of their own, and calls that outlive their connection move to the next.

Concurrency is shown without timing: calls meet at a ``threading.Barrier`` (they can only pass
it together), and a call that must not start yet is checked while the calls ahead of it are
held on an event that only the test releases. The test-driver tests take about two seconds;
the one with a real libvirtd (``@pytest.mark.libvirtd``) a few more.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from zstack_core import ManagementNode, ZStackError, hookimpl
from zstack_core.header.messages import HostRunMsg
from zstack_kvm.libvirt_host import HostWorker, LibvirtHost
from zstack_kvm.service import compute_of

from .conftest import Cloud, make_cloud, start_node
from .test_hosts import wait_for

MiB = 1 << 20
HOLD = 120.0
"""Seconds a held call waits before giving up: only reached when the code under test is wrong."""


class Held:
    """Calls that report when they run and then wait until :meth:`release`."""

    def __init__(self) -> None:
        self.running = 0
        self._lock = threading.Lock()
        self._release = threading.Event()

    def call(self, then: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
        def fn(conn: Any) -> Any:
            with self._lock:
                self.running += 1
            if not self._release.wait(HOLD):
                raise AssertionError("never released")
            return then(conn) if then is not None else None

        return fn

    async def until_running(self, n: int) -> None:
        async def enough() -> bool:
            return self.running >= n

        await wait_for(enough, timeout=HOLD, what=f"{n} held calls running")

    def release(self) -> None:
        self._release.set()


def meet(barrier: threading.Barrier) -> Callable[[Any], int]:
    """A call that passes only when ``barrier.parties`` calls are in flight together."""

    def fn(conn: Any) -> int:
        barrier.wait(HOLD)
        return int(conn.getLibVersion())

    return fn


async def queued_behind(lh: LibvirtHost, running: int) -> None:
    """Wait until one more call than ``running`` has been handed to the host's threads."""
    async def queued() -> bool:
        return lh.workers.pending > running

    await wait_for(queued, timeout=HOLD, what="a queued call")


async def host_status(cloud: Cloud) -> str:
    return str((await cloud.host_row()).status)


# -- the pool on a node (test driver) ----------------------------------------------------------


async def test_pool_size_comes_from_the_global_config_and_calls_run_side_by_side(node: ManagementNode) -> None:
    await node.configs.update("kvm", "host.libvirtWorkers", 3)
    cloud = await make_cloud(node)
    hosts = compute_of(node).hosts
    lh = hosts.connections[cloud.host.uuid]
    assert lh.workers.size == 3 and lh.workers.threads <= 3  # threads start as work arrives

    def on_host(fn: Callable[[Any], Any]) -> Any:
        return hosts.run_on(cloud.host.uuid, fn, "testing")

    # Three calls meet at a barrier: they ran at the same time on the host's one connection.
    barrier = threading.Barrier(3)
    assert all(v > 0 for v in await asyncio.gather(*(on_host(meet(barrier)) for _ in range(3))))

    # Three calls held: a fourth waits for a thread; released, it runs on the same connection.
    held = Held()
    hold = [asyncio.ensure_future(on_host(held.call())) for _ in range(3)]
    await held.until_running(3)
    fourth_ran = threading.Event()
    fourth = asyncio.ensure_future(on_host(lambda conn: fourth_ran.set() or conn.getLibVersion()))
    await asyncio.sleep(0.3)
    assert not fourth_ran.is_set() and held.running == 3
    held.release()
    await asyncio.gather(*hold, fourth)
    assert fourth_ran.is_set()

    # A new value applies to the running host within a tracker pass (0.1 s pings here).
    await node.configs.update("kvm", "host.libvirtWorkers", 5)

    async def resized() -> bool:
        return lh.workers.size == 5

    await wait_for(resized, timeout=30, what="the new size")
    barrier = threading.Barrier(5)
    await asyncio.gather(*(on_host(meet(barrier)) for _ in range(5)))


async def test_host_run_messages_run_in_order_beside_compute_calls(cloud: Cloud) -> None:
    """Other plugins' host work (``HostRunMsg``) runs one call at a time per host, in order (it
    may check and then create a bridge or a pool), while compute's own calls go on beside it."""
    node, host_uuid = cloud.node, cloud.host.uuid
    held = Held()
    order: list[str] = []
    first = asyncio.ensure_future(node.bus.call_ok(HostRunMsg(
        host_uuid=host_uuid, fn=held.call(lambda conn: order.append("first")))))
    await held.until_running(1)
    second = asyncio.ensure_future(node.bus.call_ok(HostRunMsg(
        host_uuid=host_uuid, fn=lambda conn: order.append("second"))))
    # Compute's own call is not queued behind the held HostRunMsg.
    assert await compute_of(node).hosts.run_on(host_uuid, lambda conn: conn.getLibVersion(), "testing") > 0
    await asyncio.sleep(0.3)
    assert order == []
    held.release()
    await asyncio.gather(first, second)
    assert order == ["first", "second"]


async def test_invalid_pool_size_is_refused(node: ManagementNode) -> None:
    for bad in (0, 65):
        with pytest.raises(ZStackError) as caught:
            await node.configs.update("kvm", "host.libvirtWorkers", bad)
        assert caught.value.error.code == "SYS.1007"
    assert node.configs.get("kvm", "host.libvirtWorkers") == 8


async def test_ping_is_answered_while_every_worker_is_busy(isolated_env: Path) -> None:
    pings: list[str] = []

    class Pings:
        @hookimpl
        def zstack_host_ping(self, host: Any) -> None:
            pings.append(host.uuid)

    node = await start_node(isolated_env, plugins=[Pings()])
    held = Held()
    try:
        await node.configs.update("kvm", "host.libvirtWorkers", 2)
        cloud = await make_cloud(node)
        hosts = compute_of(node).hosts
        blockers = [asyncio.ensure_future(hosts.run_on(cloud.host.uuid, held.call(), "holding")) for _ in range(2)]
        await held.until_running(2)
        pings.clear()
        # Both threads are held until the test releases them: the ping can only be answered
        # from a thread of its own. Queued behind them it would time out and drop the host.
        await hosts.ping(cloud.host.uuid, timeout=HOLD)
        assert cloud.host.uuid in pings
        assert held.running == 2
        assert await host_status(cloud) == "Connected"
        held.release()
        await asyncio.gather(*blockers)
    finally:
        held.release()
        await node.stop()


# -- the connection under the pool (test driver, no node) --------------------------------------


async def test_calls_queued_across_a_reconnect_run_on_the_new_connection() -> None:
    """What a host reconnect does to calls: those in flight finish on the old connection (which
    is closed only after them), those still queued run on the new one; never libvirt's
    "invalid connection pointer" of a connection closed under them."""
    lh = LibvirtHost("0123456789abcdef", "test:///default", workers=1)
    try:
        await lh.open(30)
        old = lh.current
        assert old is not None
        held = Held()
        in_flight = asyncio.ensure_future(lh.run(held.call(lambda conn: (conn, conn.getLibVersion()))))
        await held.until_running(1)
        queued = asyncio.ensure_future(lh.run(lambda conn: (conn, conn.getLibVersion())))
        await queued_behind(lh, 1)

        await lh.close()
        await lh.open(30)
        new = lh.current
        assert new is not None and new is not old
        assert not old.closed  # the call in flight still uses it
        held.release()

        conn_a, version_a = await in_flight
        conn_b, version_b = await queued
        assert conn_a is old.conn and version_a > 0
        assert conn_b is new.conn and version_b > 0
        assert old.closed and not new.closed
    finally:
        await lh.shutdown()


async def test_calls_queued_when_the_connection_is_dropped_fail_with_a_host_error() -> None:
    lh = LibvirtHost("0123456789abcdef", "test:///default", workers=1)
    try:
        await lh.open(30)
        held = Held()
        in_flight = asyncio.ensure_future(lh.run(held.call(lambda conn: conn.getLibVersion())))
        await held.until_running(1)
        queued = asyncio.ensure_future(lh.run(lambda conn: conn.getLibVersion()))
        await queued_behind(lh, 1)
        await lh.close()
        held.release()
        assert await in_flight > 0
        with pytest.raises(ZStackError) as caught:
            await queued
        assert caught.value.error.code == "HOST.1001"
        assert "lost its libvirt connection" in caught.value.error.details
        with pytest.raises(ZStackError) as caught:  # and a call made now is refused at once
            await lh.run(lambda conn: conn.getLibVersion())
        assert caught.value.error.code == "HOST.1001"
    finally:
        await lh.shutdown()


async def test_a_stuck_call_is_abandoned_and_its_thread_replaced() -> None:
    """A call past its timeout (a remote host that hangs) is given up with ``HOST.1005``; a new
    thread takes the stuck one's place, so the host's other calls still run."""
    worker = HostWorker("zstack-test", size=1)
    stuck = threading.Event()
    try:
        lh = LibvirtHost("0123456789abcdef", "test:///default", workers=1)
        lh.workers.stop()
        lh.workers = worker
        await lh.open(30)
        with pytest.raises(ZStackError) as caught:
            await lh.run(lambda conn: stuck.wait(HOLD), timeout=0.2)
        assert caught.value.error.code == "HOST.1005"
        assert await lh.run(lambda conn: conn.getLibVersion()) > 0
        assert worker.size == 1
        stuck.set()

        async def back_to_one() -> bool:
            return worker.threads == 1

        await wait_for(back_to_one, timeout=HOLD, what="the stuck thread to end")
        await lh.shutdown()
    finally:
        stuck.set()
        worker.stop()


async def test_threads_start_with_work_and_end_when_idle() -> None:
    """A host without work keeps no threads: they start as calls wait and end when idle."""
    worker = HostWorker("zstack-test", size=4)
    worker.IDLE_SECONDS = 0.2
    try:
        assert worker.threads == 0
        barrier = threading.Barrier(4)
        jobs = [worker.submit(lambda: barrier.wait(HOLD)) for _ in range(4)]
        await asyncio.gather(*(asyncio.wrap_future(j.future) for j in jobs))
        assert worker.threads <= 4

        async def none_left() -> bool:
            return worker.threads == 0

        await wait_for(none_left, timeout=HOLD, what="idle threads to end")
        assert await asyncio.wrap_future(worker.submit(lambda: 42).future) == 42
    finally:
        worker.stop()


# -- a real libvirtd --------------------------------------------------------------------------


@pytest.mark.libvirtd
async def test_qemu_host_calls_overlap_and_pings_pass_while_busy(libvirtd: str, isolated_env: Path) -> None:
    """On ``qemu:///system``: four libvirt calls in flight together on the host's one connection,
    a ping answered (over the pinger's own connection) while the host's threads are all held,
    and three VMs created at once all running."""
    from .test_e2e_libvirtd import remove_domains

    node = await start_node(isolated_env)
    held = Held()
    try:
        await node.configs.update("kvm", "host.libvirtWorkers", 4)
        cloud = await make_cloud(node, url=libvirtd)
        hosts = compute_of(node).hosts

        def listing_then_meet(barrier: threading.Barrier) -> Callable[[Any], int]:
            def fn(conn: Any) -> int:
                conn.listAllDomains()
                barrier.wait(HOLD)
                return len(conn.listAllDomains())

            return fn

        barrier = threading.Barrier(4)
        counts = await asyncio.gather(*(hosts.run_on(cloud.host.uuid, listing_then_meet(barrier), "listing")
                                        for _ in range(4)))
        assert len(set(counts)) >= 1

        blockers = [asyncio.ensure_future(hosts.run_on(cloud.host.uuid, held.call(lambda c: c.getLibVersion()),
                                                       "holding")) for _ in range(4)]
        await held.until_running(4)
        await hosts.ping(cloud.host.uuid, timeout=HOLD)
        assert held.running == 4 and await host_status(cloud) == "Connected"
        held.release()
        assert all(v > 0 for v in await asyncio.gather(*blockers))

        vms = await asyncio.gather(*(cloud.create_vm(name=f"pool-{i}", memory=64 * MiB) for i in range(3)))
        assert {v.state for v in vms} == {"Running"}
        states = await cloud.domains()
        assert all(states[f"zstack-{v.uuid}"] == libvirt.VIR_DOMAIN_RUNNING for v in vms)
    finally:
        held.release()
        uuids = [v.uuid for v in await node.query.find("VmInstance")]
        await node.stop()
        remove_domains(uuids)
