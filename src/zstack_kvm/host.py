"""KVM hosts: add, connect (a flow chain others extend), ping, reconnect with back-off, admin
states with maintenance, delete, and ``HostRunMsg`` (run a function on a host's connection).

Status is the connection (``Connecting``, ``Connected``, ``Disconnected``); state is the admin
state (``Enabled``, ``Disabled``, ``PreMaintenance``, ``Maintenance``). Work on one host is
ordered by the task queue ``host-<uuid>`` (work on one VM by ``vm-<uuid>``); the libvirt calls
themselves run in the host's worker threads, pings in a thread of their own
(:mod:`.libvirt_host`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from typing import Any

import attrs

from zstack_core import ErrorCode, ZStackError, handles, invalid_argument
from zstack_core.header import HostConnectFlows, HostInventory
from zstack_core.header.messages import HostRunMsg, HostRunReply
from zstack_core.ownership import own_sync

from .api import (
    APIAddKVMHostMsg,
    APIChangeHostStateMsg,
    APIDeleteHostMsg,
    APIHostEvent,
    APIReconnectHostMsg,
    APIUpdateHostMsg,
)
from .cascade import run_cascade
from .checks import cascade_mode, check_description, check_name, check_state_event
from .configs import (
    HOST_CONNECT_TIMEOUT,
    HOST_LIBVIRT_WORKERS,
    HOST_MAX_RECONNECT_INTERVAL,
    HOST_PING_INTERVAL,
    MIGRATION_QUANTITY,
)
from .errors import HostErrors
from .hypervisor import guest_facts
from .libvirt_host import LibvirtHost, libvirt_error
from .models import HostVO, LeftDomainVO, VmInstanceVO
from .service import Part
from .zone import forget_resource_sync

__all__ = ["HostPart", "host_uri"]

log = logging.getLogger("zstack.kvm.host")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


def host_uri(msg: APIAddKVMHostMsg) -> str:
    """The libvirt URI of the host ``msg`` adds: ``url``, or ``qemu+ssh://`` to ``managementIp``."""
    if msg.url is not None and msg.management_ip is not None:
        raise invalid_argument("give either url (a libvirt URI) or managementIp, not both", "$.url")
    if msg.url is not None:
        return msg.url
    if msg.management_ip is None:
        raise invalid_argument("url (a libvirt URI) or managementIp is required", "$.url")
    ip = msg.management_ip.strip()
    try:
        addr = ipaddress.ip_address(ip)
        where = f"[{addr}]" if addr.version == 6 else str(addr)
    except ValueError:
        if not _HOSTNAME.match(ip):
            raise invalid_argument(f"managementIp {msg.management_ip!r} is neither an IP address nor a host name",
                                   "$.managementIp") from None
        where = ip
    if not _USER.match(msg.username):
        raise invalid_argument(f"username {msg.username!r} is not a valid user name", "$.username")
    if not 1 <= msg.ssh_port <= 65535:
        raise invalid_argument(f"sshPort must be between 1 and 65535, got {msg.ssh_port}", "$.sshPort")
    port = "" if msg.ssh_port == 22 else f":{msg.ssh_port}"
    return f"qemu+ssh://{msg.username}@{where}{port}/system"


class HostPart(Part):
    def __init__(self, service: Any) -> None:
        super().__init__(service)
        self.connections: dict[str, LibvirtHost] = {}
        self._failures: dict[str, int] = {}
        self._next_attempt: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tracker: asyncio.Task[None] | None = None
        self._owners: dict[str, str] = {}
        """Each host's owner node at the tracker's last pass: tells a host whose node left (to
        reconnect) from one that moved because a node joined (to take over as it is)."""
        self._managed: set[str] = set()
        """Hosts this node's tracker pings and reconnects: those it owns in the cluster's ring
        (``node.cluster.owns``). A host owned but not yet managed has just come to this node."""
        self.wake = asyncio.Event()
        """Set to run a tracker pass now (a host was lost, ``kvm/host.pingInterval`` changed)."""
        self._removing: set[str] = set()
        """Hosts being deleted (from when their connection is dropped) or deleted: the tracker
        leaves them alone. A pass that read the host before it was deleted would otherwise
        report it lost and open a new connection entry for it, left behind for good."""

    # -- lookups ------------------------------------------------------------------------------

    async def get(self, uuid: str, field: str = "uuid") -> HostVO:
        row = await self.db(lambda: HostVO.get_or_none(HostVO.uuid == uuid))
        if row is None:
            raise HostErrors.exc("1007", f"no host {uuid}", field=field)
        return row

    async def inventory(self, uuid: str) -> HostInventory:
        return (await self.get(uuid)).to_inventory()  # type: ignore[no-any-return]

    def libvirt_host(self, uuid: str) -> LibvirtHost:
        lh = self.connections.get(uuid)
        if lh is None:
            raise HostErrors.exc("1001", f"host {uuid} is not connected from this management node")
        return lh

    async def run_on(self, host_uuid: str, fn: Any, what: str, timeout: float | None = None,
                     serial: bool = False) -> Any:
        """``fn(conn)`` on one of the host's worker threads (``serial``: the host's one thread
        for calls in order); libvirt failures become ``HOST.1008``."""
        lh = self.connections.get(host_uuid)
        if (lh is None or not lh.is_open) and host_uuid not in self._managed:
            # Another node's host, or one that has just come to this node (added through another
            # node, or its node left) and that the tracker has not taken over yet: open our own
            # connection now rather than fail until the tracker's next pass.
            lh = await self.attach(host_uuid)
        else:
            lh = self.libvirt_host(host_uuid)
        try:
            return await lh.run(fn, timeout, serial)
        except ZStackError:
            raise
        except Exception as exc:
            raise libvirt_error(exc, what) from exc

    async def attach(self, uuid: str) -> LibvirtHost:
        """This node's own connection to a host another management node manages, for the work
        this node does there (VMs it creates, storage and network work through ``HostRunMsg``):
        opened on demand with the guest facts read, but no connect chain and no status change,
        which are the owner's."""
        lh = self.connections.get(uuid)
        if lh is not None and lh.is_open and lh.guest is not None:
            return lh
        row = await self.get(uuid)
        if row.status != "Connected":
            raise HostErrors.exc("1001", f"host {uuid} is {row.status}")
        lh = self._ensure(uuid, row.management_url)

        async def work() -> None:
            if not lh.is_open:
                await lh.open(self.node.configs.get(HOST_CONNECT_TIMEOUT.category, HOST_CONNECT_TIMEOUT.name))
            if lh.guest is None:
                try:
                    lh.guest = await lh.run(guest_facts)
                except ZStackError:
                    raise
                except Exception as exc:
                    raise libvirt_error(exc, f"reading the facts of host {uuid}") from exc

        await self.node.tasks.run(f"host-{uuid}", work)
        return lh

    async def attach_quietly(self, uuid: str) -> None:
        try:
            await self.attach(uuid)
        except ZStackError as exc:
            log.info("no connection of this node to host %s yet: %s", uuid, exc.error)

    async def set_status(self, uuid: str, status: str) -> None:
        await self.db(lambda: HostVO.update(status=status).where(HostVO.uuid == uuid).execute())

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Reconnect every host in the database (in the background) and start pinging."""
        rows = await self.db(lambda: list(HostVO.select()))
        for row in rows:
            self._ensure(row.uuid, row.management_url)
            self._managed.add(row.uuid)  # connected just now; the tracker keeps the ones it owns
            self._spawn(self.reconnect_quietly(row.uuid))
        self._tracker = asyncio.get_running_loop().create_task(self._track(), name="zstack-kvm-host-tracker")

    async def stop(self) -> None:
        if self._tracker is not None:
            self._tracker.cancel()
            await asyncio.gather(self._tracker, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(lh.shutdown() for lh in self.connections.values()), return_exceptions=True)
        self.connections.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure(self, uuid: str, url: str) -> LibvirtHost:
        lh = self.connections.get(uuid)
        workers = self.node.configs.get(HOST_LIBVIRT_WORKERS.category, HOST_LIBVIRT_WORKERS.name)
        if lh is None or lh.uri.uri != url:
            lh = LibvirtHost(uuid, url, on_domain_event=lambda dom, ev, detail: self.service.sync.hint(uuid, dom),
                             on_close=lambda reason: self._on_close(uuid, reason), workers=workers)
            self.connections[uuid] = lh
        elif lh.workers.size != workers:
            lh.workers.resize(workers)  # kvm/host.libvirtWorkers changed
        return lh

    # -- add ----------------------------------------------------------------------------------

    @handles(APIAddKVMHostMsg)
    async def add(self, msg: APIAddKVMHostMsg) -> APIHostEvent:
        name = check_name(msg.name)
        check_description(msg.description)
        uri = host_uri(msg)
        cluster = await self.service.clusters.get(msg.cluster_uuid)
        if cluster.hypervisor_type != "KVM":
            raise HostErrors.exc("1000", f"cluster {cluster.uuid} is a {cluster.hypervisor_type} cluster, not KVM",
                                 field="clusterUuid")
        draft = HostInventory(uuid="", name=name, zone_uuid=cluster.zone_uuid, cluster_uuid=cluster.uuid,
                              management_url=uri, description=msg.description)
        await self.node.hooks.host_before_add(draft)

        def insert() -> str:
            if HostVO.select().where(HostVO.management_url == uri).exists():
                raise HostErrors.exc("1002", f"a host with URI {uri} already exists", field="url")
            row = HostVO.create(name=name, description=msg.description, zone_uuid=cluster.zone_uuid,
                                cluster_uuid=cluster.uuid, management_url=uri, status="Connecting")
            own_sync(row.uuid, "Host", msg.account_uuid)
            self.node.tags.create_sync(row.uuid, "Host", msg.system_tags)
            return str(row.uuid)

        uuid = await self.node.tasks.run(f"cluster-{cluster.uuid}", lambda: self.atomic(insert))
        self._ensure(uuid, uri)
        if self.node.cluster.owns(uuid):
            self._managed.add(uuid)  # else its owner's tracker takes it over at its next pass
        try:
            await self.node.tasks.run(f"host-{uuid}", lambda: self.connect(uuid, first_time=True))
        except BaseException:
            # The first connect failed: nothing of the host may remain (ZStack deletes it too).
            lh = self.connections.pop(uuid, None)
            if lh is not None:
                await lh.shutdown()
            await self.atomic(self._remove_sync, uuid)
            raise
        inv = await self.inventory(uuid)
        await self.node.hooks.host_after_add(inv)
        return APIHostEvent(inventory=inv)

    # -- connect ------------------------------------------------------------------------------

    async def connect(self, uuid: str, first_time: bool) -> None:
        """Run the host-connect chain, then ``zstack_host_connected``; the host ends Connected
        or (raising) Disconnected. Call inside the ``host-<uuid>`` task queue."""
        row = await self.get(uuid)
        lh = self._ensure(uuid, row.management_url)
        await self.set_status(uuid, "Connecting")
        data: dict[str, Any] = {"host": row.to_inventory(), "node": self.node, "first_time": first_time}
        try:
            await self.node.flow_chain(HostConnectFlows.CHAIN).run(data)
            # The hooks see the host as it will be once they agree (the row says so after them).
            connected = attrs.evolve(await self.inventory(uuid), status="Connected")
            await self.node.hooks.host_connected(connected, first_time)
        except BaseException as exc:
            await lh.close()
            await self.set_status(uuid, "Disconnected")
            if isinstance(exc, ZStackError) and exc.error.code != "HOST.1005":
                raise HostErrors.exc("1005", f"connecting host {uuid} ({row.management_url}) failed",
                                     cause=exc.error) from exc
            raise
        await self.set_status(uuid, "Connected")
        self._failures.pop(uuid, None)
        self._next_attempt.pop(uuid, None)
        log.info("host %s (%s) connected", uuid, row.management_url)
        await self.service.sync.reconcile_host(uuid)

    async def reconnect(self, uuid: str) -> None:
        async def work() -> None:
            lh = self.connections.get(uuid)
            if lh is not None:
                await lh.close()
            await self.connect(uuid, first_time=False)

        await self.node.tasks.run(f"host-{uuid}", work)

    async def reconnect_quietly(self, uuid: str) -> None:
        """A reconnect attempt from the tracker or at start-up: failures only push the next
        attempt back (exponential back-off up to ``kvm/host.maxReconnectInterval``)."""
        try:
            await self.reconnect(uuid)
        except ZStackError as exc:
            failures = self._failures.get(uuid, 0) + 1
            self._failures[uuid] = failures
            base = self.node.configs.get(HOST_PING_INTERVAL.category, HOST_PING_INTERVAL.name)
            cap = self.node.configs.get(HOST_MAX_RECONNECT_INTERVAL.category, HOST_MAX_RECONNECT_INTERVAL.name)
            delay = min(base * (2 ** failures), cap)
            self._next_attempt[uuid] = time.monotonic() + delay
            log.info("host %s still unreachable (%s); next attempt in %.1fs", uuid, exc.error, delay)

    @handles(APIReconnectHostMsg)
    async def reconnect_api(self, msg: APIReconnectHostMsg) -> APIHostEvent:
        await self.get(msg.uuid)
        await self.reconnect(msg.uuid)
        return APIHostEvent(inventory=await self.inventory(msg.uuid))

    # -- losing a host ------------------------------------------------------------------------

    def _on_close(self, uuid: str, reason: int) -> None:
        """libvirt closed the connection (daemon died, keepalive timed out): act now."""
        lh = self.connections.get(uuid)
        self._spawn(self.lost(uuid, HostErrors.error("1001", f"libvirt closed the connection (reason {reason})"),
                              generation=lh.generation if lh is not None else None))

    async def lost(self, uuid: str, reason: ErrorCode, generation: int | None = None) -> None:
        """Mark a Connected host Disconnected, its VMs Unknown, and tell the plugins.

        ``generation``: the connection the failure was seen on (:attr:`LibvirtHost.generation`).
        If a newer one has been opened since (a reconnect that raced the failed ping), the
        failure is old news and the host stays as the reconnect left it."""
        if uuid in self._removing:
            return  # its connection was dropped because it is being deleted
        if not self.node.cluster.owns(uuid):
            # Another node manages this host (its status, its VMs); only our connection broke.
            lh = self.connections.get(uuid)
            if lh is not None:
                await lh.close()
            return
        row = await self.db(lambda: HostVO.get_or_none(HostVO.uuid == uuid))
        if row is None or row.status != "Connected":
            return
        def mark() -> int:
            current = self.connections.get(uuid)
            if generation is not None and current is not None and current.generation != generation:
                return 0  # checked here, in the database thread, so a reconnect cannot slip in after it
            return int(HostVO.update(status="Disconnected")
                       .where((HostVO.uuid == uuid) & (HostVO.status == "Connected")).execute())

        changed = await self.db(mark)
        if not changed:
            return
        log.warning("host %s (%s) disconnected: %s", uuid, row.management_url, reason)
        lh = self.connections.get(uuid)
        if lh is not None:
            await lh.close()
        self._next_attempt[uuid] = time.monotonic() + self.node.configs.get(
            HOST_PING_INTERVAL.category, HOST_PING_INTERVAL.name)
        await self.service.vms.host_lost(uuid)
        await self.node.hooks.host_disconnected(await self.inventory(uuid), reason)
        self.wake.set()

    # -- the ping tracker ---------------------------------------------------------------------

    async def _track(self) -> None:
        while True:
            interval = self.node.configs.get(HOST_PING_INTERVAL.category, HOST_PING_INTERVAL.name)
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.ping_all(interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("host tracker pass failed")

    async def ping_all(self, interval: float) -> None:
        rows = await self.db(lambda: list(HostVO.select(HostVO.uuid, HostVO.status, HostVO.management_url)))
        now = time.monotonic()
        work = []
        cluster = self.node.cluster
        for row in rows:
            if row.uuid in self._removing:
                continue
            self._ensure(row.uuid, row.management_url)
            owner, previous = cluster.owner_of(row.uuid), self._owners.get(row.uuid)
            self._owners[row.uuid] = owner
            if owner != cluster.uuid:
                self._managed.discard(row.uuid)  # its owner pings it; we keep a connection for our work
                if row.status == "Connected" and not self.connections[row.uuid].is_open:
                    work.append(self.attach_quietly(row.uuid))
                continue
            if row.uuid not in self._managed:
                self._managed.add(row.uuid)
                if previous is not None and previous != owner and previous not in cluster.members:
                    # Its node left (or died): what that node knew of the host is gone with it.
                    log.info("host %s is now managed by this node (its management node %s left); reconnecting",
                             row.uuid, previous)
                    work.append(self.reconnect_quietly(row.uuid))
                    continue
                if row.status == "Connected":
                    # Moved here from a live node (one joined) or added through another node: it is
                    # connected; open our own connection and ping it from now on.
                    log.info("host %s is now managed by this node", row.uuid)
                    work.append(self._take_over(row.uuid, max(interval, 5.0)))
                    continue
            if row.status == "Connected":
                work.append(self.ping(row.uuid, max(interval, 5.0)))
            elif row.status == "Disconnected" and now >= self._next_attempt.get(row.uuid, 0):
                work.append(self.reconnect_quietly(row.uuid))
        await asyncio.gather(*work)

    async def _take_over(self, uuid: str, timeout: float) -> None:
        try:
            await self.attach(uuid)
        except ZStackError as exc:
            await self.lost(uuid, exc.error)
            return
        await self.ping(uuid, timeout)

    async def ping(self, uuid: str, timeout: float) -> None:
        lh = self.connections.get(uuid)
        generation = lh.generation if lh is not None else None
        try:
            if lh is None or not lh.is_open:
                raise HostErrors.exc("1001", "no open libvirt connection")
            # In the host's ping thread, timed from when it starts: never behind slow calls.
            await lh.ping(timeout)
            await self.node.hooks.host_ping(await self.inventory(uuid))
        except ZStackError as exc:
            await self.lost(uuid, exc.error, generation)

    # -- HostRunMsg ---------------------------------------------------------------------------

    @handles(HostRunMsg)
    async def run_msg(self, msg: HostRunMsg) -> HostRunReply:
        """Other plugins' functions run one at a time per host, in order, as they did when a host
        had one thread: network's and storage's host work checks and then creates (a bridge, a
        libvirt network or pool), which two VMs created at once would otherwise both do. Compute's
        own calls (domain starts, stops...) run side by side on the host's other threads."""
        if msg.host_uuid not in self.connections:
            await self.get(msg.host_uuid, "hostUuid")
        result = await self.run_on(msg.host_uuid, msg.fn, f"running {getattr(msg.fn, '__name__', 'a function')} "
                                                          f"on host {msg.host_uuid}", serial=True)
        return HostRunReply(result=result)

    # -- update and state ---------------------------------------------------------------------

    @handles(APIUpdateHostMsg)
    async def update(self, msg: APIUpdateHostMsg) -> APIHostEvent:
        fields: dict[str, Any] = {}
        if msg.name is not None:
            fields["name"] = check_name(msg.name)
        if msg.description is not None:
            check_description(msg.description)
            fields["description"] = msg.description
        row = await self.get(msg.uuid)
        if fields:
            await self.db(lambda: HostVO.update(**fields).where(HostVO.uuid == row.uuid).execute())
        return APIHostEvent(inventory=await self.inventory(msg.uuid))

    @handles(APIChangeHostStateMsg)
    async def change_state(self, msg: APIChangeHostStateMsg) -> APIHostEvent:
        event = check_state_event(msg.state_event, ("enable", "disable", "maintain"))
        await self.get(msg.uuid)

        async def work() -> None:
            if event == "maintain":
                await self.maintain(msg.uuid)
            else:
                state = "Enabled" if event == "enable" else "Disabled"
                await self.db(lambda: HostVO.update(state=state).where(HostVO.uuid == msg.uuid).execute())

        await self.node.tasks.run(f"host-{msg.uuid}", work)
        return APIHostEvent(inventory=await self.inventory(msg.uuid))

    async def maintain(self, uuid: str) -> None:
        """PreMaintenance; migrate (or stop, where migration is impossible or a plugin's
        ``zstack_host_maintenance_policy`` says so) every VM, at most ``kvm/vm.migrationQuantity``
        at a time; then Maintenance. On failure the host goes back to its previous state."""
        row = await self.get(uuid)
        if row.state == "Maintenance":
            return
        previous = row.state if row.state != "PreMaintenance" else "Enabled"
        if row.status != "Connected":
            raise HostErrors.exc("1001", f"host {uuid} is {row.status}; it must be Connected to evacuate its VMs")
        await self.db(lambda: HostVO.update(state="PreMaintenance").where(HostVO.uuid == uuid).execute())
        try:
            vms = await self.db(lambda: [v.uuid for v in VmInstanceVO.select(VmInstanceVO.uuid)
                                         .where(VmInstanceVO.host_uuid == uuid).order_by(VmInstanceVO.created_at)])
            policy: dict[str, str] = {}
            for answer in await self.node.hooks.host_maintenance_policy(await self.inventory(uuid), list(vms)):
                for vm_uuid, action in (answer or {}).items():
                    policy.setdefault(vm_uuid, action)
            limit = self.node.configs.get(MIGRATION_QUANTITY.category, MIGRATION_QUANTITY.name)
            gate = asyncio.Semaphore(limit)

            async def evacuate(vm_uuid: str) -> None:
                async with gate:
                    await self.service.migration.evacuate(vm_uuid, uuid, policy.get(vm_uuid, "migrate"))

            results = await asyncio.gather(*(evacuate(v) for v in vms), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                first = errors[0]
                cause = first.error if isinstance(first, ZStackError) else None
                raise HostErrors.exc("1009", f"{len(errors)} of {len(vms)} VMs could not leave host {uuid}",
                                     cause=cause)
        except BaseException:
            await self.db(lambda: HostVO.update(state=previous).where(HostVO.uuid == uuid).execute())
            raise
        await self.db(lambda: HostVO.update(state="Maintenance").where(HostVO.uuid == uuid).execute())

    # -- delete -------------------------------------------------------------------------------

    @handles(APIDeleteHostMsg)
    async def delete_api(self, msg: APIDeleteHostMsg) -> APIHostEvent:
        mode = cascade_mode(msg.delete_mode)
        await self.get(msg.uuid)
        await self.delete(msg.uuid, mode)
        return APIHostEvent()

    async def delete(self, uuid: str, mode: str) -> None:
        async def work() -> None:
            row = await self.db(lambda: HostVO.get_or_none(HostVO.uuid == uuid))
            if row is None:
                return
            inv = row.to_inventory()
            if mode != "force":
                await self.node.hooks.host_before_delete(inv)
            await run_cascade(self.service, "Host", uuid, mode)
            self._removing.add(uuid)
            try:
                lh = self.connections.pop(uuid, None)
                if lh is not None:
                    await lh.shutdown()
                await self.atomic(self._remove_sync, uuid)
            except BaseException:
                self._removing.discard(uuid)  # still there: the tracker looks after it again
                raise
            self._failures.pop(uuid, None)
            self._next_attempt.pop(uuid, None)
            await self.node.hooks.host_after_delete(inv)

        await self.node.tasks.run(f"host-{uuid}", work)

    def _remove_sync(self, uuid: str) -> None:
        HostVO.delete().where(HostVO.uuid == uuid).execute()
        LeftDomainVO.delete().where(LeftDomainVO.host_uuid == uuid).execute()
        VmInstanceVO.update(last_host_uuid=None).where(VmInstanceVO.last_host_uuid == uuid).execute()
        forget_resource_sync(self.node, uuid)
