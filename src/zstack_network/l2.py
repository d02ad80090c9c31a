"""L2 networks: create, delete, attach to clusters, and realize on hosts.

Who makes the bridge. The ``zstack_l2_realize_on_host`` hookspec was written for a hypervisor
plugin to implement; here the network service realizes L2 networks itself, because it owns
everything a bridge depends on (the physical interface, the VLAN, the DHCP server that must sit
on the same broadcast domain) and compute owns only the connection. It sends compute a
``HostRunMsg`` whose function, run in the host's worker thread:

* on a local privileged QEMU host (``qemu:///system``): creates the Linux bridge ``br_<if>`` (or
  ``br_<if>_<vlan>``) with ``ip link``, and for a VLAN network the sub-interface
  ``<if>.<vlan>`` enslaved to it; for a no-VLAN network the physical interface itself is
  enslaved (refused while it carries IPv4 addresses: moving a host's address is an operator's
  decision);
* on every host, local or libvirt's test driver: defines and starts a libvirt network
  ``zs-l2-<uuid>`` in ``bridge`` forward mode naming that bridge, so ``virsh net-list`` shows
  what was realized. On ``test:///`` hosts that record is all there is: the test driver has no
  kernel bridges;
* a remote URI (``qemu+ssh://``) is refused with ``L2.1005``: ``ip`` would run on the wrong
  machine.

Then ``zstack_l2_realize_on_host`` is called for other plugins to add to the realization (a
failure there fails it). It happens when the network is attached to a cluster (every Connected
host of it) and when a host of an attached cluster connects.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

import libvirt

from zstack_core.errors import SysErrors, ZStackError, invalid_argument
from zstack_core.header import HostInventory, L2NetworkInventory
from zstack_core.ownership import disown_sync, own_sync
from zstack_core.service import handles

from . import hosts
from .api import (
    APIAttachL2NetworkToClusterMsg,
    APICreateL2NoVlanNetworkMsg,
    APICreateL2VlanNetworkMsg,
    APIDeleteL2NetworkMsg,
    APIDetachL2NetworkFromClusterMsg,
    APIL2NetworkEvent,
)
from .errors import L2Errors
from .models import L2NetworkClusterRefVO, L2NetworkHostRefVO, L2NetworkVO, L3NetworkVO, VmNicVO, write_transaction

__all__ = ["L2Api", "l2_inventories", "libvirt_l2_name", "realize_fn", "unrealize_fn"]

log = logging.getLogger("zstack.network.l2")

_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_UUID = re.compile(r"[0-9a-f]{32}")


def check_resource_uuid(value: str | None) -> str | None:
    """A caller-chosen UUID (ZStack's ``resourceUuid``) must look like one."""
    if value is not None and not _UUID.fullmatch(value):
        raise invalid_argument(f"resourceUuid {value!r} is not 32 lower-case hex digits", "resourceUuid")
    return value


def libvirt_l2_name(l2_uuid: str) -> str:
    return f"zs-l2-{l2_uuid}"


def l2_inventories(rows: list[L2NetworkVO]) -> list[L2NetworkInventory]:
    """Rows as inventories with their attached clusters (database thread; one query)."""
    if not rows:
        return []
    attached: dict[str, list[str]] = {r.uuid: [] for r in rows}
    refs = (L2NetworkClusterRefVO.select(L2NetworkClusterRefVO.l2_network_uuid, L2NetworkClusterRefVO.cluster_uuid)
            .where(L2NetworkClusterRefVO.l2_network_uuid.in_(list(attached)))
            .order_by(L2NetworkClusterRefVO.id).tuples())
    for l2_uuid, cluster_uuid in refs:
        attached[l2_uuid].append(cluster_uuid)
    return [L2NetworkInventory(uuid=r.uuid, name=r.name, zone_uuid=r.zone_uuid, physical_interface=r.physical_interface,
                               type=r.type, vlan=r.vlan, description=r.description,
                               attached_cluster_uuids=attached[r.uuid]) for r in rows]


def l2_inventory_sync(uuid: str) -> L2NetworkInventory:
    row = L2NetworkVO.get_or_none(L2NetworkVO.uuid == uuid)
    if row is None:
        raise SysErrors.exc("1004", f"no L2 network {uuid}")
    return l2_inventories([row])[0]


# -- on the host ------------------------------------------------------------------------------


def _ensure_libvirt_network(conn: Any, name: str, xml: str) -> None:
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        net = conn.networkDefineXML(xml)
    if not net.isActive():
        net.create()
    try:
        net.setAutostart(True)
    except libvirt.libvirtError:  # the test driver may not keep autostart; nothing depends on it
        pass


def _remove_libvirt_network(conn: Any, name: str) -> None:
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return
    if net.isActive():
        net.destroy()
    if net.isPersistent():
        net.undefine()


def _linux_bridge(l2: L2NetworkInventory) -> None:
    """Create (or check) the bridge of ``l2`` in this machine's kernel. Idempotent; a bridge it
    created is removed again when a later step fails, so a failed realize leaves nothing."""
    bridge = l2.bridge_name
    phys = hosts.interface(l2.physical_interface)
    if phys is None:
        raise L2Errors.exc("1006", f"physical interface {l2.physical_interface} does not exist on the host")
    created = hosts.interface(bridge) is None
    if created:
        hosts.ip("link", "add", bridge, "type", "bridge")
    try:
        _bridge_ports(l2, phys)
    except BaseException:
        if created:
            hosts.ip("link", "del", bridge, check=False)
        raise


def _bridge_ports(l2: L2NetworkInventory, phys: dict[str, Any]) -> None:
    bridge = l2.bridge_name
    hosts.ip("link", "set", bridge, "up")
    if l2.vlan is not None:
        vif = l2.vlan_interface
        assert vif is not None
        if hosts.interface(vif) is None:
            made = hosts.ip("link", "add", "link", l2.physical_interface, "name", vif, "type", "vlan", "id",
                            str(l2.vlan), check=False)
            if made.returncode != 0:
                hint = (" (this kernel has no 802.1Q VLAN support: the 8021q module is missing)"
                        if "Unknown device type" in made.stderr else "")
                raise L2Errors.exc("1006", f"cannot create VLAN interface {vif} on {l2.physical_interface}{hint}: "
                                           f"{made.stderr.strip()}")
            created_vif: str | None = vif
        else:
            created_vif = None
        port, name = hosts.interface(vif), vif
        try:
            _enslave(l2, port, name)
        except BaseException:
            if created_vif:
                hosts.ip("link", "del", created_vif, check=False)
            raise
    else:
        port, name = phys, l2.physical_interface
        master = phys.get("master")
        if master != bridge and any(a.get("family") == "inet" for a in phys.get("addr_info", [])):
            raise L2Errors.exc("1006", f"{name} carries IPv4 addresses; move them to {bridge} or use a VLAN network "
                                       "(the network service does not move a host's addresses)")
        _enslave(l2, port, name)


def _enslave(l2: L2NetworkInventory, port: dict[str, Any] | None, name: str) -> None:
    bridge = l2.bridge_name
    assert port is not None
    master = port.get("master")
    if master and master != bridge:
        raise L2Errors.exc("1002", f"{name} is already a port of bridge {master}")
    if master != bridge:
        hosts.ip("link", "set", name, "master", bridge)
    hosts.ip("link", "set", l2.physical_interface, "up")
    hosts.ip("link", "set", name, "up")


def _remove_linux_bridge(l2: L2NetworkInventory) -> None:
    if l2.vlan is not None:
        vif = l2.vlan_interface
        if vif and hosts.interface(vif) is not None:
            hosts.ip("link", "del", vif)
    else:
        phys = hosts.interface(l2.physical_interface)
        if phys is not None and phys.get("master") == l2.bridge_name:
            hosts.ip("link", "set", l2.physical_interface, "nomaster")
    if hosts.interface(l2.bridge_name) is not None:
        hosts.ip("link", "del", l2.bridge_name)


def realize_fn(l2s: Sequence[L2NetworkInventory]) -> Callable[[Any], str]:
    """The function compute runs on a host to realize ``l2s``; returns the connection kind."""

    def realize(conn: Any) -> str:
        kind = hosts.connection_kind(conn)
        if kind == "remote":
            raise L2Errors.exc("1005", f"{conn.getURI()} is not on this machine: bridges can be made for "
                                       "qemu:///system and test:/// hosts only")
        for l2 in l2s:
            if kind == "local":
                _linux_bridge(l2)
            xml = (f"<network><name>{libvirt_l2_name(l2.uuid)}</name><forward mode='bridge'/>"
                   f"<bridge name={quoteattr(l2.bridge_name)}/></network>")
            _ensure_libvirt_network(conn, libvirt_l2_name(l2.uuid), xml)
        return kind

    return realize


def unrealize_fn(l2: L2NetworkInventory) -> Callable[[Any], None]:
    def unrealize(conn: Any) -> None:
        _remove_libvirt_network(conn, libvirt_l2_name(l2.uuid))
        if hosts.connection_kind(conn) == "local":
            _remove_linux_bridge(l2)

    return unrealize


# -- the APIs ---------------------------------------------------------------------------------


class L2Api:
    """L2 handlers and realization, mixed into the network service."""

    node: Any
    if TYPE_CHECKING:
        async def remove_dhcp_of_l2(self, l2_uuid: str, host_uuids: Sequence[str]) -> None: ...

    async def realize_l2(self, l2s: Sequence[L2NetworkInventory], host: HostInventory) -> None:
        """Realize ``l2s`` on ``host`` (one trip to the host), record it, tell other plugins."""
        if not l2s:
            return
        names = ", ".join(l2.name for l2 in l2s)
        await hosts.run_on_host(self.node, host.uuid, realize_fn(l2s),
                                L2Errors.error("1003", f"L2 network(s) {names} on host {host.name}"))

        def record() -> None:
            for l2 in l2s:
                L2NetworkHostRefVO.insert(l2_network_uuid=l2.uuid, host_uuid=host.uuid).on_conflict_ignore().execute()

        await self.node.db.run(record)
        for l2 in l2s:
            await self.node.hooks.call("zstack_l2_realize_on_host", l2=l2, host=host)

    async def unrealize_l2(self, l2: L2NetworkInventory, host_uuids: Sequence[str]) -> list[str]:
        """Remove ``l2`` from hosts; return the hosts where that failed (they keep their ref)."""
        failed = []
        for host_uuid in host_uuids:
            try:
                await hosts.run_on_host(self.node, host_uuid, unrealize_fn(l2),
                                        L2Errors.error("1003", f"removing L2 network {l2.name} from host {host_uuid}"))
            except ZStackError as exc:
                log.warning("%s", exc)
                failed.append(host_uuid)
                continue
            await self.node.db.run(lambda h=host_uuid: L2NetworkHostRefVO.delete().where(
                (L2NetworkHostRefVO.l2_network_uuid == l2.uuid) & (L2NetworkHostRefVO.host_uuid == h)).execute())
        return failed

    async def _create_l2(self, msg: Any, vlan: int | None, l2_type: str) -> APIL2NetworkEvent:
        check_resource_uuid(msg.resource_uuid)
        if not msg.name.strip():
            raise invalid_argument("name must not be empty", "name")
        if not _IFNAME.fullmatch(msg.physical_interface):
            raise L2Errors.exc("1006", f"{msg.physical_interface!r} is not a Linux interface name "
                                       "(1-15 letters, digits, '_', '.', '-')")
        if vlan is not None and not 1 <= vlan <= 4094:
            raise L2Errors.exc("1001", f"VLAN id {vlan} is not in 1..4094")
        exists = await hosts.zone_exists(self.node, msg.zone_uuid)
        if exists is False:
            raise SysErrors.exc("1004", f"no zone {msg.zone_uuid}")
        probe = L2NetworkInventory(uuid=msg.resource_uuid or "", name=msg.name, zone_uuid=msg.zone_uuid,
                                   physical_interface=msg.physical_interface, vlan=vlan)

        def create() -> L2NetworkInventory:
            with write_transaction():
                clash = L2NetworkVO.get_or_none((L2NetworkVO.zone_uuid == msg.zone_uuid)
                                                & (L2NetworkVO.bridge_name == probe.bridge_name))
                if clash is not None:
                    raise L2Errors.exc("1002", f"L2 network {clash.name} ({clash.uuid}) of zone {msg.zone_uuid} already "
                                               f"uses bridge {probe.bridge_name} ({msg.physical_interface}"
                                               + (f", VLAN {vlan})" if vlan is not None else ")"))
                kwargs = {"uuid": msg.resource_uuid} if msg.resource_uuid else {}
                row = L2NetworkVO.create(name=msg.name, description=msg.description, zone_uuid=msg.zone_uuid,
                                         physical_interface=msg.physical_interface, type=l2_type, vlan=vlan,
                                         bridge_name=probe.bridge_name, **kwargs)
                own_sync(row.uuid, "L2Network", msg.account_uuid)
                if msg.system_tags:
                    self.node.tags.create_sync(row.uuid, "L2Network", msg.system_tags)
                return l2_inventories([row])[0]

        return APIL2NetworkEvent(inventory=await self.node.db.run(create))

    @handles(APICreateL2NoVlanNetworkMsg)
    async def create_l2_novlan(self, msg: APICreateL2NoVlanNetworkMsg) -> APIL2NetworkEvent:
        return await self._create_l2(msg, None, "L2NoVlanNetwork")

    @handles(APICreateL2VlanNetworkMsg)
    async def create_l2_vlan(self, msg: APICreateL2VlanNetworkMsg) -> APIL2NetworkEvent:
        return await self._create_l2(msg, msg.vlan, "L2VlanNetwork")

    @handles(APIDeleteL2NetworkMsg)
    async def delete_l2(self, msg: APIDeleteL2NetworkMsg) -> APIL2NetworkEvent:
        return await self.node.tasks.run(f"l2-{msg.uuid}", lambda: self._delete_l2(msg.uuid))

    async def _delete_l2(self, uuid: str) -> APIL2NetworkEvent:
        def load() -> tuple[L2NetworkInventory, list[str], int]:
            inv = l2_inventory_sync(uuid)
            l3_count = L3NetworkVO.select().where(L3NetworkVO.l2_network_uuid == uuid).count()
            realized = [h for (h,) in L2NetworkHostRefVO.select(L2NetworkHostRefVO.host_uuid)
                        .where(L2NetworkHostRefVO.l2_network_uuid == uuid).tuples()]
            return inv, realized, l3_count

        inv, realized, l3_count = await self.node.db.run(load)
        if l3_count:
            raise L2Errors.exc("1004", f"L2 network {inv.name} has {l3_count} L3 network(s); delete them first")
        await self.unrealize_l2(inv, realized)  # hosts that failed are left as they are: the row goes anyway

        def delete() -> None:
            with write_transaction():
                if L3NetworkVO.select().where(L3NetworkVO.l2_network_uuid == uuid).exists():
                    raise L2Errors.exc("1004", f"L2 network {inv.name} got an L3 network while being deleted")
                L2NetworkVO.delete().where(L2NetworkVO.uuid == uuid).execute()
                self.node.tags.delete_sync(uuid)
                disown_sync(uuid)

        await self.node.db.run(delete)
        return APIL2NetworkEvent(inventory=inv)

    @handles(APIAttachL2NetworkToClusterMsg)
    async def attach_l2(self, msg: APIAttachL2NetworkToClusterMsg) -> APIL2NetworkEvent:
        return await self.node.tasks.run(f"l2-{msg.l2_network_uuid}", lambda: self._attach_l2(msg))

    async def _attach_l2(self, msg: APIAttachL2NetworkToClusterMsg) -> APIL2NetworkEvent:
        l2 = await self.node.db.run(l2_inventory_sync, msg.l2_network_uuid)
        found = await hosts.clusters(self.node, [msg.cluster_uuid])
        if found is None:
            raise SysErrors.exc("1004", f"no cluster {msg.cluster_uuid}: no loaded plugin provides clusters")
        cluster = found.get(msg.cluster_uuid)
        if cluster is None:
            raise SysErrors.exc("1004", f"no cluster {msg.cluster_uuid}")
        if cluster.zone_uuid != l2.zone_uuid:
            raise L2Errors.exc("1000", f"cluster {cluster.name} is in zone {cluster.zone_uuid}, L2 network {l2.name} "
                                       f"in zone {l2.zone_uuid}")
        if msg.cluster_uuid in l2.attached_cluster_uuids:
            return APIL2NetworkEvent(inventory=l2)

        def attach() -> None:
            with write_transaction():
                others = (L2NetworkVO.select().join(L2NetworkClusterRefVO, on=(
                    L2NetworkClusterRefVO.l2_network_uuid == L2NetworkVO.uuid))
                    .where((L2NetworkClusterRefVO.cluster_uuid == msg.cluster_uuid)
                           & (L2NetworkVO.bridge_name == l2.bridge_name)))
                other = others.first()
                if other is not None:
                    raise L2Errors.exc("1002", f"L2 network {other.name} attached to cluster {cluster.name} already "
                                               f"uses bridge {l2.bridge_name}")
                L2NetworkClusterRefVO.insert(l2_network_uuid=l2.uuid, cluster_uuid=msg.cluster_uuid) \
                    .on_conflict_ignore().execute()

        await self.node.db.run(attach)
        try:
            for host in await hosts.hosts_of_clusters(self.node, [msg.cluster_uuid]):
                await self.realize_l2([l2], host)
        except ZStackError:
            # As ZStack: an attach that cannot be realized on every connected host is undone.
            await self.node.db.run(lambda: L2NetworkClusterRefVO.delete().where(
                (L2NetworkClusterRefVO.l2_network_uuid == l2.uuid)
                & (L2NetworkClusterRefVO.cluster_uuid == msg.cluster_uuid)).execute())
            realized = await self.node.db.run(lambda: [h for (h,) in L2NetworkHostRefVO.select(
                L2NetworkHostRefVO.host_uuid).where(L2NetworkHostRefVO.l2_network_uuid == l2.uuid).tuples()])
            in_cluster = {h.uuid for h in await hosts.hosts_of_clusters(self.node, [msg.cluster_uuid], False)}
            await self.unrealize_l2(l2, [h for h in realized if h in in_cluster])
            raise
        return APIL2NetworkEvent(inventory=await self.node.db.run(l2_inventory_sync, l2.uuid))

    @handles(APIDetachL2NetworkFromClusterMsg)
    async def detach_l2(self, msg: APIDetachL2NetworkFromClusterMsg) -> APIL2NetworkEvent:
        return await self.node.tasks.run(f"l2-{msg.l2_network_uuid}", lambda: self._detach_l2(msg))

    async def _detach_l2(self, msg: APIDetachL2NetworkFromClusterMsg) -> APIL2NetworkEvent:
        l2 = await self.node.db.run(l2_inventory_sync, msg.l2_network_uuid)
        if msg.cluster_uuid not in l2.attached_cluster_uuids:
            return APIL2NetworkEvent(inventory=l2)

        def nic_vms() -> list[str]:
            query = (VmNicVO.select(VmNicVO.vm_instance_uuid).join(L3NetworkVO, on=(
                VmNicVO.l3_network_uuid == L3NetworkVO.uuid)).where(L3NetworkVO.l2_network_uuid == l2.uuid).distinct())
            return [v for (v,) in query.tuples()]

        vm_uuids = await self.node.db.run(nic_vms)
        in_cluster = [v.uuid for v in (await hosts.vms(self.node, vm_uuids)).values()
                      if v.cluster_uuid == msg.cluster_uuid]
        if in_cluster:
            raise L2Errors.exc("1004", f"{len(in_cluster)} VM(s) of cluster {msg.cluster_uuid} have NICs on L2 network "
                                       f"{l2.name} (e.g. {in_cluster[0]}); detach their L3 networks first")
        await self.node.db.run(lambda: L2NetworkClusterRefVO.delete().where(
            (L2NetworkClusterRefVO.l2_network_uuid == l2.uuid)
            & (L2NetworkClusterRefVO.cluster_uuid == msg.cluster_uuid)).execute())
        cluster_hosts = {h.uuid for h in await hosts.hosts_of_clusters(self.node, [msg.cluster_uuid], False)}
        realized = await self.node.db.run(lambda: [h for (h,) in L2NetworkHostRefVO.select(
            L2NetworkHostRefVO.host_uuid).where(L2NetworkHostRefVO.l2_network_uuid == l2.uuid).tuples()])
        targets = [h for h in realized if h in cluster_hosts]
        await self.remove_dhcp_of_l2(l2.uuid, targets)
        await self.unrealize_l2(l2, targets)
        return APIL2NetworkEvent(inventory=await self.node.db.run(l2_inventory_sync, l2.uuid))
