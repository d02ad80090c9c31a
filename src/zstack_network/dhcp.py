"""DHCP: one libvirt network running dnsmasq per L3 network, on each host that needs it.

Layout on a ``qemu:///system`` host, for L3 network ``L`` on L2 network bridge ``br_eth0_100``::

    VM NIC (tap) ──┐
                   br_eth0_100 ── eth0.100            (the L2 network: see l2.py)
    zsdl<L> ───────┘
       │ veth pair
    zsdd<L> ─── zsdb<L>  (bridge of libvirt network zs-dhcp-<L>: gateway address, dnsmasq)

libvirt creates and owns the bridge of a network that runs dnsmasq, so that bridge cannot be
the L2 bridge (which exists before any L3 network, carries several of them and must outlive
them). A veth pair joins the two bridges into one broadcast domain: a VM on the L2 bridge sends
DHCPDISCOVER, the frame crosses the veth, dnsmasq answers from its static host list. This is
ZStack's flat-network layout (its DHCP namespace hangs off the L2 bridge by a veth) with a
libvirt network in place of the namespace.

The network XML has ``<ip address=gateway netmask=...>`` with a ``<dhcp>`` that lists one
``<host mac ip name>`` per NIC and no dynamic range (dnsmasq runs ``dhcp-range=…,static``: only
NICs IPAM allocated get leases), DNS forwarders from the L3 network's DNS servers, its domain,
and, because libvirt suppresses the router option on networks without forwarding, a dnsmasq
option advertising the gateway. Entries are added and removed live with ``networkUpdate``
(``IP_DHCP_HOST``, ``ADD_LAST``/``DELETE``); dnsmasq re-reads its hostsfile.

Two ways to change a host's DHCP server, both serialized per L3 network (``dhcp-<uuid>`` task
queue):

* a full reconcile (:meth:`DhcpApi.sync_dhcp`, :func:`reconcile_fn`): the function sent to the
  host compares what it has with what the database says and fixes the difference, so the same
  call creates the network, repairs a host that rebooted or reconnected, or follows a DNS or
  range change. It reads every NIC of the L3 network and the network's XML: O(NICs).
* one host entry per NIC (:meth:`DhcpApi.update_dhcp_entries`, :func:`entries_fn`): a NIC that
  got or gave back its address (VM create, expunge, attach and detach of an L3 network) is added
  or removed alone, after the database commit; changes waiting for the queue together go to
  each host in one call. A host where that cannot be done (network missing, an entry clashing)
  falls back to the full reconcile. This keeps the network service's own work per VM create
  independent of the VMs already on the L3 network. (libvirt's ``networkUpdate`` itself still
  formats and parses the whole network definition on each change: about 30 ms with 1,000
  entries and 300 ms with 10,000 on the test driver, measured in November 2026; that, not this
  module, is what grows with the entries now.)

Each reads the database when its turn comes, so a late call never undoes a newer one.

On ``test:///`` hosts the same libvirt network is defined in the test driver (which runs no
dnsmasq and drops the dnsmasq option) and no veth exists.

Known limit: every host running VMs of an L3 network runs its own DHCP server with the same
gateway address; on a physical L2 shared by several hosts those answer each other's clients
(with identical static entries) and the gateway address is duplicated. ZStack isolates them with
ebtables rules on the physical port; that is not done here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import attrs
import libvirt
import peewee

from zstack_core.errors import ZStackError
from zstack_core.header import HostInventory, L2NetworkInventory

from . import hosts
from .errors import L2Errors, L3Errors
from .l2 import l2_inventories, realize_fn
from zstack_core.prepared import Prepared
from .models import (
    DhcpNetworkHostRefVO,
    IpRangeVO,
    L2NetworkHostRefVO,
    L2NetworkVO,
    L3NetworkDnsVO,
    L3NetworkVO,
    VmNicVO,
)

__all__ = ["DhcpApi", "DhcpHost", "DhcpSpec", "dhcp_network_name", "entries_fn", "load_spec_sync", "network_xml",
           "reconcile_fn"]

log = logging.getLogger("zstack.network.dhcp")

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def dhcp_network_name(l3_uuid: str) -> str:
    return f"zs-dhcp-{l3_uuid}"


def dhcp_bridge_name(l3_uuid: str) -> str:
    return f"zsdb{l3_uuid[:11]}"


def veth_names(l3_uuid: str) -> tuple[str, str]:
    """(end on the L2 bridge, end on the DHCP bridge)."""
    return f"zsdl{l3_uuid[:11]}", f"zsdd{l3_uuid[:11]}"


@attrs.frozen(kw_only=True)
class DhcpHost:
    mac: str
    ip: str
    name: str


@attrs.frozen(kw_only=True)
class DhcpSpec:
    """What the DHCP server of an L3 network must look like."""

    l3_uuid: str
    l2: L2NetworkInventory
    gateway: str
    netmask: str
    dns: tuple[str, ...] = ()
    domain: str | None = None
    hosts: tuple[DhcpHost, ...] = ()


def hostname_of(ip: str) -> str:
    """ZStack's default DHCP host name for a NIC: its address with dashes (``10-0-0-5``)."""
    return ip.replace(".", "-")


def load_spec_sync(l3_uuid: str) -> DhcpSpec | None:
    """The DHCP server ``l3_uuid`` should have, or None when it should have none (DHCP off, no
    IP range, or the L3 network is gone). Database thread."""
    l3 = L3NetworkVO.get_or_none(L3NetworkVO.uuid == l3_uuid)
    if l3 is None or not l3.enable_dhcp:
        return None
    first = IpRangeVO.select().where(IpRangeVO.l3_network_uuid == l3_uuid).order_by(IpRangeVO.start_int).first()
    if first is None:
        return None
    l2 = l2_inventories([L2NetworkVO.get_by_id(l3.l2_network_uuid)])[0]
    dns = tuple(d for (d,) in L3NetworkDnsVO.select(L3NetworkDnsVO.dns).where(L3NetworkDnsVO.l3_network_uuid == l3_uuid)
                .order_by(L3NetworkDnsVO.position, L3NetworkDnsVO.id).tuples())
    nics = (VmNicVO.select(VmNicVO.mac, VmNicVO.ip).where((VmNicVO.l3_network_uuid == l3_uuid) & VmNicVO.ip.is_null(False))
            .order_by(VmNicVO.mac).tuples())
    return DhcpSpec(l3_uuid=l3_uuid, l2=l2, gateway=first.gateway, netmask=first.netmask, dns=dns,
                    domain=l3.dns_domain, hosts=tuple(DhcpHost(mac=m, ip=ip, name=hostname_of(ip)) for m, ip in nics))


def host_xml(h: DhcpHost) -> str:
    return f"<host mac={quoteattr(h.mac)} name={quoteattr(h.name)} ip={quoteattr(h.ip)}/>"


def network_xml(spec: DhcpSpec) -> str:
    """The libvirt network XML of ``spec``."""
    dns = "".join(f"<forwarder addr={quoteattr(d)}/>" for d in spec.dns)
    domain = f"<domain name={quoteattr(spec.domain)} localOnly='yes'/>" if spec.domain else ""
    hosts_xml = "".join(host_xml(h) for h in spec.hosts)
    return (f"<network xmlns:dnsmasq='{DNSMASQ_NS}'>"
            f"<name>{dhcp_network_name(spec.l3_uuid)}</name>"
            f"<bridge name={quoteattr(dhcp_bridge_name(spec.l3_uuid))} stp='off'/>"
            f"{domain}<dns>{dns}</dns>"
            f"<ip address={quoteattr(spec.gateway)} netmask={quoteattr(spec.netmask)}><dhcp>{hosts_xml}</dhcp></ip>"
            f"<dnsmasq:options><dnsmasq:option value={quoteattr('dhcp-option=option:router,' + spec.gateway)}/>"
            f"</dnsmasq:options></network>")


def _shape(xml: str) -> tuple[Any, ...]:
    """What of a network's XML must match the spec for it to be kept (hosts aside)."""
    root = ET.fromstring(xml)
    bridge = root.find("bridge")
    ip = root.find("ip")
    domain = root.find("domain")
    netmask = ip.get("netmask") if ip is not None else None
    if ip is not None and netmask is None and ip.get("prefix"):
        netmask = str(ipaddress.IPv4Network(f"0.0.0.0/{ip.get('prefix')}").netmask)
    return (bridge.get("name") if bridge is not None else None, ip.get("address") if ip is not None else None, netmask,
            tuple(f.get("addr") for f in root.findall("dns/forwarder")),
            domain.get("name") if domain is not None else None)


def _hosts_of(xml: str) -> dict[str, DhcpHost]:
    root = ET.fromstring(xml)
    return {h.get("mac", "").lower(): DhcpHost(mac=h.get("mac", "").lower(), ip=h.get("ip", ""), name=h.get("name", ""))
            for h in root.findall("ip/dhcp/host")}


def reconcile_fn(spec: DhcpSpec) -> Callable[[Any], dict[str, int]]:
    """The function compute runs on a host to make its DHCP server of ``spec.l3_uuid`` match
    ``spec``. Returns how many host entries were added and removed (for logs and tests)."""

    def reconcile(conn: Any) -> dict[str, int]:
        kind = hosts.connection_kind(conn)
        if kind == "remote":
            raise L2Errors.exc("1005", f"{conn.getURI()} is not on this machine")
        realize_fn([spec.l2])(conn)  # the L2 bridge first: the veth hangs off it
        name = dhcp_network_name(spec.l3_uuid)
        want = network_xml(spec)
        created = 0
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            net = None
        if net is not None and _shape(net.XMLDesc(0)) != _shape(want):
            log.info("DHCP network %s changed shape; redefining it", name)
            if net.isActive():
                net.destroy()
            net.undefine()
            net = None
        if net is None:
            net = conn.networkDefineXML(want)
            created = 1
        if not net.isActive():
            net.create()
        try:
            net.setAutostart(True)
        except libvirt.libvirtError:
            pass
        have = _hosts_of(net.XMLDesc(0))
        wanted = {h.mac.lower(): h for h in spec.hosts}
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        removed = added = 0
        for mac, h in have.items():
            if wanted.get(mac) != h:
                net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
                           host_xml(h), flags)
                removed += 1
        for mac, h in wanted.items():
            if have.get(mac) != h:
                net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
                           host_xml(h), flags)
                added += 1
        if kind == "local":
            _veth(spec)
        return {"created": created, "added": added, "removed": removed}

    return reconcile


def entries_fn(l3_uuid: str, add: Sequence[DhcpHost], remove: Sequence[DhcpHost]) -> Callable[[Any], dict[str, int]]:
    """The function compute runs on a host to add and remove single host entries of the DHCP
    server of ``l3_uuid`` (``networkUpdate`` of the ``ip-dhcp-host`` section), without reading
    the network's XML: the cost is the entries changed, not the entries there are. Returns
    counts; ``missing`` 1 when the host has no such network, ``failed`` the entries libvirt
    refused (an entry already there, or not there to delete): the caller then reconciles that
    host in full."""

    def update(conn: Any) -> dict[str, int]:
        try:
            net = conn.networkLookupByName(dhcp_network_name(l3_uuid))
        except libvirt.libvirtError:
            return {"missing": 1, "added": 0, "removed": 0, "failed": 0}
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if net.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        added = removed = failed = 0
        have: dict[str, DhcpHost] | None = None  # the network's entries, read only when libvirt refuses one
        for command, entries in ((libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, remove),
                                 (libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, add)):
            adding = entries is add
            for h in entries:
                try:
                    net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host_xml(h), flags)
                except libvirt.libvirtError as exc:
                    # Already as wanted (a full reconcile got there first)? Then nothing failed.
                    if have is None:
                        have = _hosts_of(net.XMLDesc(0))
                    there = have.get(h.mac.lower())
                    if (there == h) if adding else (there is None and h not in have.values()):
                        continue
                    log.info("DHCP entry %s of %s not %s: %s", h, l3_uuid, "added" if adding else "removed",
                             exc.get_error_message())
                    failed += 1
                    continue
                have = None
                if adding:
                    added += 1
                else:
                    removed += 1
        return {"missing": 0, "added": added, "removed": removed, "failed": failed}

    return update


@attrs.define(eq=False)
class _EntryBatch:
    """Host-entry changes of one L3 network waiting for its DHCP queue (joined until it runs)."""

    add: list[DhcpHost]
    remove: list[DhcpHost]
    done: asyncio.Future[None]


def _veth(spec: DhcpSpec) -> None:
    """Join the DHCP bridge to the L2 bridge with a veth pair (idempotent)."""
    l2_end, dhcp_end = veth_names(spec.l3_uuid)
    if hosts.interface(l2_end) is None:
        hosts.ip("link", "add", l2_end, "type", "veth", "peer", "name", dhcp_end)
    for end, bridge in ((l2_end, spec.l2.bridge_name), (dhcp_end, dhcp_bridge_name(spec.l3_uuid))):
        info = hosts.interface(end)
        if info is None or info.get("master") != bridge:
            hosts.ip("link", "set", end, "master", bridge)
        hosts.ip("link", "set", end, "up")


def remove_fn(l3_uuid: str) -> Callable[[Any], None]:
    def remove(conn: Any) -> None:
        try:
            net = conn.networkLookupByName(dhcp_network_name(l3_uuid))
        except libvirt.libvirtError:
            net = None
        if net is not None:
            if net.isActive():
                net.destroy()
            if net.isPersistent():
                net.undefine()
        if hosts.connection_kind(conn) == "local":
            l2_end, _ = veth_names(l3_uuid)
            if hosts.interface(l2_end) is not None:
                hosts.ip("link", "del", l2_end)  # takes its peer with it

    return remove


_DHCP_HOSTS = Prepared(lambda p: DhcpNetworkHostRefVO.select(DhcpNetworkHostRefVO.host_uuid)
                       .where(DhcpNetworkHostRefVO.l3_network_uuid == p.l3))
_HOST_HAS = Prepared(lambda p: L2NetworkHostRefVO.select(peewee.SQL("2"), L2NetworkHostRefVO.l2_network_uuid)
                     .where(L2NetworkHostRefVO.host_uuid == p.host)
                     .union_all(DhcpNetworkHostRefVO.select(peewee.SQL("3"), DhcpNetworkHostRefVO.l3_network_uuid)
                                .where(DhcpNetworkHostRefVO.host_uuid == p.host)))
"""What a host has: its realized L2 networks (2) and the L3 networks it serves DHCP for (3)."""


class DhcpApi:
    """Keeps the DHCP servers of L3 networks in step with the database (service mixin)."""

    node: Any
    if TYPE_CHECKING:
        async def realize_l2(self, l2s: Sequence[L2NetworkInventory], host: HostInventory) -> None: ...

    async def _dhcp_hosts(self, l3_uuid: str) -> list[str]:
        return await self.node.db.run(lambda: [h for (h,) in _DHCP_HOSTS.run(l3=l3_uuid)])

    async def _reconcile_hosts(self, l3_uuid: str, host_uuids: Sequence[str] | None, strict: bool) -> None:
        """The body of :meth:`sync_dhcp` (call it only in the ``dhcp-<uuid>`` queue's turn)."""
        targets = list(host_uuids) if host_uuids is not None else await self._dhcp_hosts(l3_uuid)
        if not targets:
            return
        spec = await self.node.db.run(load_spec_sync, l3_uuid)
        if spec is None:
            await self._remove(l3_uuid, targets)
            return
        for host_uuid in targets:
            try:
                result = await hosts.run_on_host(self.node, host_uuid, reconcile_fn(spec),
                                                 L3Errors.error("1010", f"DHCP of L3 network {l3_uuid} on host "
                                                                        f"{host_uuid}"))
            except ZStackError as exc:
                if strict:
                    raise
                log.warning("%s", exc.error)
                continue
            log.debug("DHCP of %s on %s: %s", l3_uuid, host_uuid, result)
            await self.node.db.run(lambda h=host_uuid: DhcpNetworkHostRefVO.insert(
                l3_network_uuid=l3_uuid, host_uuid=h).on_conflict_ignore().execute())

    async def update_dhcp_entries(self, l3_uuid: str, add: Sequence[DhcpHost] = (),
                                  remove: Sequence[DhcpHost] = ()) -> None:
        """Add and remove single host entries (NICs that got or gave back an address) on every
        host that runs the DHCP server of ``l3_uuid``, after the database says so.

        Changes of many NICs that wait for the L3 network's DHCP queue at the same time go out
        together (one call per host). A host where an entry cannot be changed alone (its
        network is missing, an entry is already there or not there) is reconciled in full from
        the database, as :meth:`sync_dhcp` does; failures are logged and the host is repaired
        at its next reconnect."""
        if not add and not remove:
            return
        while True:
            pending = self._dhcp_batches.get(l3_uuid)
            if pending is None:
                break
            pending.add.extend(add)  # not started: it has read nothing yet, so it takes ours too
            pending.remove.extend(remove)
            try:
                await asyncio.shield(pending.done)
                return
            except asyncio.CancelledError:
                if not pending.done.cancelled():
                    raise  # this caller was cancelled
                # The batch we joined never ran: start or join another with our changes.
        batch = _EntryBatch(add=list(add), remove=list(remove), done=asyncio.get_running_loop().create_future())
        batch.done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self._dhcp_batches[l3_uuid] = batch

        async def turn() -> None:
            if self._dhcp_batches.get(l3_uuid) is batch:
                del self._dhcp_batches[l3_uuid]  # from now on, changes start the next batch
            await self._apply_entries(l3_uuid, batch)

        try:
            await self.node.tasks.run(f"dhcp-{l3_uuid}", turn)
        except BaseException as exc:
            if self._dhcp_batches.get(l3_uuid) is batch:
                del self._dhcp_batches[l3_uuid]
            if isinstance(exc, asyncio.CancelledError):
                batch.done.cancel()
            elif not batch.done.done():
                batch.done.set_exception(exc)
            raise
        batch.done.set_result(None)

    async def _apply_entries(self, l3_uuid: str, batch: _EntryBatch) -> None:
        targets = await self._dhcp_hosts(l3_uuid)
        add, remove = list(batch.add), list(batch.remove)
        for host_uuid in targets:
            try:
                result = await hosts.run_on_host(self.node, host_uuid, entries_fn(l3_uuid, add, remove),
                                                 L3Errors.error("1010", f"DHCP entries of L3 network {l3_uuid} on "
                                                                        f"host {host_uuid}"))
            except ZStackError as exc:
                log.warning("%s", exc.error)
                continue
            log.debug("DHCP entries of %s on %s: %s", l3_uuid, host_uuid, result)
            if result["missing"] or result["failed"]:
                try:
                    await self._reconcile_hosts(l3_uuid, [host_uuid], strict=False)
                except ZStackError as exc:
                    log.warning("%s", exc.error)

    @property
    def _dhcp_batches(self) -> dict[str, _EntryBatch]:
        batches: dict[str, _EntryBatch] | None = self.__dict__.get("_dhcp_batches_map")
        if batches is None:
            batches = self.__dict__["_dhcp_batches_map"] = {}
        return batches

    async def sync_dhcp(self, l3_uuid: str, host_uuids: Sequence[str] | None = None, strict: bool = False) -> None:
        """Reconcile the DHCP server of ``l3_uuid`` on ``host_uuids`` (default: every host that
        has one). ``strict`` raises ``L3.1010`` on the first host that fails; otherwise failures
        are logged and the host is fixed at its next reconnect."""

        async def run() -> None:
            await self._reconcile_hosts(l3_uuid, host_uuids, strict)

        # Coalesce: while a sync of the same kind waits for its turn, later callers join it
        # instead of queueing another. It has not read the database yet, so it will see their
        # changes too; once it starts reading, the next caller queues a fresh one.
        key = (l3_uuid, None if host_uuids is None else tuple(sorted(host_uuids)), strict)
        pending = self._dhcp_waiting.get(key)
        while pending is not None:
            try:
                await asyncio.shield(pending)
                return
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                pending = self._dhcp_waiting.get(key)  # the one we joined was: start or join another
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self._dhcp_waiting[key] = waiting

        async def turn() -> None:
            if self._dhcp_waiting.get(key) is waiting:
                del self._dhcp_waiting[key]
            await run()

        try:
            await self.node.tasks.run(f"dhcp-{l3_uuid}", turn)
        except BaseException as exc:
            if self._dhcp_waiting.get(key) is waiting:
                del self._dhcp_waiting[key]
            if isinstance(exc, asyncio.CancelledError):
                waiting.cancel()
            elif not waiting.done():
                waiting.set_exception(exc)
            raise
        waiting.set_result(None)

    @property
    def _dhcp_waiting(self) -> dict[tuple[Any, ...], asyncio.Future[None]]:
        waiting: dict[tuple[Any, ...], asyncio.Future[None]] | None = self.__dict__.get("_dhcp_waiting_map")
        if waiting is None:
            waiting = self.__dict__["_dhcp_waiting_map"] = {}
        return waiting

    async def _remove(self, l3_uuid: str, host_uuids: Sequence[str]) -> None:
        for host_uuid in host_uuids:
            try:
                await hosts.run_on_host(self.node, host_uuid, remove_fn(l3_uuid),
                                        L3Errors.error("1010", f"removing DHCP of L3 network {l3_uuid} from host "
                                                               f"{host_uuid}"))
            except ZStackError as exc:
                log.warning("%s", exc.error)
                continue
            await self.node.db.run(lambda h=host_uuid: DhcpNetworkHostRefVO.delete().where(
                (DhcpNetworkHostRefVO.l3_network_uuid == l3_uuid) & (DhcpNetworkHostRefVO.host_uuid == h)).execute())

    async def remove_dhcp(self, l3_uuid: str, host_uuids: Sequence[str] | None = None) -> None:
        """Remove the DHCP server of ``l3_uuid`` from ``host_uuids`` (default: everywhere)."""

        async def run() -> None:
            targets = list(host_uuids) if host_uuids is not None else await self._dhcp_hosts(l3_uuid)
            await self._remove(l3_uuid, targets)

        await self.node.tasks.run(f"dhcp-{l3_uuid}", run)

    async def remove_dhcp_of_l2(self, l2_uuid: str, host_uuids: Sequence[str]) -> None:
        l3_uuids = await self.node.db.run(lambda: [u for (u,) in L3NetworkVO.select(L3NetworkVO.uuid)
                                                   .where(L3NetworkVO.l2_network_uuid == l2_uuid).tuples()])
        for l3_uuid in l3_uuids:
            await self.remove_dhcp(l3_uuid, host_uuids)

    async def prepare_host(self, host: HostInventory, l3_uuids: Sequence[str],
                           l2_of: Mapping[str, L2NetworkInventory] | None = None) -> None:
        """Make ``host`` ready for NICs on ``l3_uuids``: their L2 networks realized, their DHCP
        servers up with every NIC's entry. Raises on failure (a VM must not start without them).
        ``l2_of``: the L2 network of each L3 network when the caller read them already.

        What the host already has (recorded when it was done) is not redone: NIC changes reach
        every host with the DHCP server as they happen, and a host that reconnects is reconciled
        in full (``zstack_host_connected``)."""
        l3_uuids = list(dict.fromkeys(l3_uuids))
        if not l3_uuids:
            return
        known = l2_of is not None and all(u in l2_of for u in l3_uuids)

        def missing() -> tuple[list[L2NetworkInventory], list[str]]:
            # What the host has, in one statement: its realized L2 networks and DHCP servers.
            realized: set[str] = set()
            served: set[str] = set()
            for kind, uuid in _HOST_HAS.run(host=host.uuid):
                (realized if kind == 2 else served).add(uuid)
            if known:
                assert l2_of is not None
                wanted = {l2_of[u].uuid: l2_of[u] for u in l3_uuids}
                l2s = [l2 for u, l2 in wanted.items() if u not in realized]
            else:
                rows = (L2NetworkVO.select().join(L3NetworkVO, on=(L3NetworkVO.l2_network_uuid == L2NetworkVO.uuid))
                        .where(L3NetworkVO.uuid.in_(l3_uuids)).distinct())
                l2s = l2_inventories([r for r in rows if r.uuid not in realized])
            return l2s, [u for u in l3_uuids if u not in served]

        l2s, l3s = await self.node.db.run(missing)
        if l2s:
            await self.realize_l2(l2s, host)
        for l3_uuid in l3s:
            await self.sync_dhcp(l3_uuid, [host.uuid], strict=True)
