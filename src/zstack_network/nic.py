"""VM NICs: a MAC that never collides, an address from IPAM, and how compute sees them.

A NIC row (``VmNicVO``) holds its MAC, unique in the database: a random locally administered
unicast address ``fa:xx:xx:xx:xx:xx`` is inserted and, should it clash with one taken by anyone
(another process, another node), a new one is drawn. Its address comes from
:func:`.ipam.allocate_ip_sync`. Both happen in the transaction of the caller, so a NIC never
exists without its address or the other way round (the VM-create flows do them in two steps,
each with its own rollback, as ZStack's ``VmAllocateNicFlow``).

Compute gets NICs through ``AllocateVmNicMsg``/``ReleaseVmNicMsg`` (attach/detach L3 network),
through the VM-create flows (:mod:`.flows`), and as :class:`NicTO` from
``zstack_vm_domain_devices`` each time it defines a domain: the NIC is a port of the L2
network's bridge, which also carries the L3 network's DHCP server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from zstack_core.db import new_uuid, utcnow
from zstack_core.errors import SysErrors
from zstack_core.header import HostInventory, L2NetworkInventory, NicTO, VmNicInventory
from zstack_core.header.backends import IpAllocationStrategy
from zstack_core.header.messages import AllocateVmNicMsg, AllocateVmNicReply, ReleaseVmNicMsg
from zstack_core.messages import MessageReply
from zstack_core.ownership import disown_sync, own_sync
from zstack_core.service import handles

from . import hosts
from .dhcp import DhcpHost, hostname_of
from .ipam import HINTS, allocate_ip_sync, ip_to_int, parse_ip
from zstack_core.prepared import ClashInsert, Prepared
from .models import L2NetworkVO, L3NetworkVO, UsedIpVO, VmNicSecurityGroupRefVO, VmNicVO, write_transaction

__all__ = [
    "NicApi", "ReleasedNic", "assign_ip_sync", "create_nic_sync", "new_mac", "nic_to", "nic_tos_sync", "release_ip_sync",
    "release_nic_sync", "vm_nics_sync",
]

log = logging.getLogger("zstack.network.nic")

MAC_ATTEMPTS = 16


def new_mac() -> str:
    """A random locally administered unicast MAC in ``fa:…`` (0xfa: local bit set, group bit clear)."""
    return "fa:" + ":".join(f"{b:02x}" for b in os.urandom(5))


@attrs.frozen(kw_only=True)
class ReleasedNic:
    """What releasing a NIC gave back, so callers can update DHCP and security groups."""

    nic: VmNicInventory
    security_group_uuids: list[str]


def _l3(l3_uuid: str) -> L3NetworkVO:
    row = L3NetworkVO.get_or_none(L3NetworkVO.uuid == l3_uuid)
    if row is None:
        raise SysErrors.exc("1004", f"no L3 network {l3_uuid}")
    return row


_INSERT_NIC = ClashInsert(lambda p: VmNicVO.insert(
    uuid=p.uuid, created_at=p.now, updated_at=p.now, vm_instance_uuid=p.vm, l3_network_uuid=p.l3, mac=p.mac,
    device_id=p.device_int, internal_name=p.name))
_SET_NIC_IP = Prepared(lambda p: VmNicVO.update(used_ip_uuid=p.used, ip=p.ip, netmask=p.netmask, gateway=p.gateway)
                       .where((VmNicVO.uuid == p.nic) & VmNicVO.used_ip_uuid.is_null()))


def create_nic_sync(vm_uuid: str, l3_uuid: str, device_id: int, account_uuid: str | None,
                    taken: set[int] | None = None) -> VmNicInventory:
    """A NIC of ``vm_uuid`` on ``l3_uuid`` with a fresh MAC and no address yet (database thread,
    in the caller's write transaction). ``device_id`` is kept if free on the VM, else the lowest
    free one is used.

    ``taken``: the device ids the VM's NICs have, when the caller knows them (a VM being created
    has only the NICs its create made, and the create check saw the L3 network): then neither
    the L3 network nor the VM's NICs are read again; the foreign key still refuses an L3 network
    that is gone."""
    if taken is None:
        _l3(l3_uuid)
        taken = {d for (d,) in VmNicVO.select(VmNicVO.device_id).where(VmNicVO.vm_instance_uuid == vm_uuid).tuples()}
    if device_id in taken or device_id < 0:
        device_id = next(i for i in range(len(taken) + 1) if i not in taken)
    internal_name = f"zs{vm_uuid[:8]}.{device_id}"[:15]
    for _ in range(MAC_ATTEMPTS):
        uuid, mac = new_uuid(), new_mac()
        if not _INSERT_NIC.run(uuid=uuid, now=utcnow(), vm=vm_uuid, l3=l3_uuid, mac=mac, device_int=device_id,
                               name=internal_name):
            if not VmNicVO.select().where(VmNicVO.mac == mac).exists():
                raise SysErrors.exc("1015", f"NIC {uuid} clashed with a row on a key other than its MAC")
            log.warning("MAC %s is taken; drawing another", mac)
            continue
        own_sync(uuid, "VmNic", account_uuid)
        return VmNicInventory(uuid=uuid, vm_instance_uuid=vm_uuid, l3_network_uuid=l3_uuid, mac=mac,
                              device_id=device_id, internal_name=internal_name)
    raise SysErrors.exc("1015", f"no unique MAC address after {MAC_ATTEMPTS} draws")


def assign_ip_sync(nic_uuid: str, strategy: IpAllocationStrategy, requested: str | None,
                   fresh: VmNicInventory | None = None) -> VmNicInventory:
    """Give the NIC an address of its L3 network (database thread, caller's write transaction).

    ``fresh``: the NIC as its creator returned it, without an address (the create flow made it
    a moment ago in this VM's serialized create), so it is not read again."""
    if fresh is not None and fresh.uuid == nic_uuid and fresh.ip is None:
        inv = fresh
    else:
        nic = VmNicVO.get_or_none(VmNicVO.uuid == nic_uuid)
        if nic is None:
            raise SysErrors.exc("1004", f"no VM NIC {nic_uuid}")
        if nic.used_ip_uuid:
            return nic.to_inventory()  # type: ignore[no-any-return]
        inv = nic.to_inventory()
    got = allocate_ip_sync(inv.l3_network_uuid, strategy, requested, vm_nic_uuid=nic_uuid)
    updated = _SET_NIC_IP.run(used=got.used_ip_uuid, ip=got.ip, netmask=got.netmask, gateway=got.gateway,
                              nic=nic_uuid).rowcount
    if not updated:  # the NIC is gone, or got an address meanwhile: the transaction takes ours back
        raise SysErrors.exc("1004", f"VM NIC {nic_uuid} is gone or already has an address")
    return attrs.evolve(inv, ip=got.ip, netmask=got.netmask, gateway=got.gateway)


def release_ip_sync(nic_uuid: str) -> None:
    """Return the NIC's address to its range; the NIC stays (flow rollback)."""
    for l3_uuid, value in UsedIpVO.select(UsedIpVO.l3_network_uuid, UsedIpVO.ip_int).where(
            UsedIpVO.vm_nic_uuid == nic_uuid).tuples():
        HINTS.lower(l3_uuid, value)
    UsedIpVO.delete().where(UsedIpVO.vm_nic_uuid == nic_uuid).execute()
    VmNicVO.update(used_ip_uuid=None, ip=None, netmask=None, gateway=None).where(VmNicVO.uuid == nic_uuid).execute()


def release_nic_sync(nic_uuid: str) -> ReleasedNic | None:
    """Delete the NIC, its address and its security-group memberships; None if it is gone
    already (releasing is idempotent). Database thread, caller's write transaction."""
    nic = VmNicVO.get_or_none(VmNicVO.uuid == nic_uuid)
    if nic is None:
        return None
    groups = [g for (g,) in VmNicSecurityGroupRefVO.select(VmNicSecurityGroupRefVO.security_group_uuid)
              .where(VmNicSecurityGroupRefVO.vm_nic_uuid == nic_uuid).tuples()]
    for ref in VmNicSecurityGroupRefVO.select().where(VmNicSecurityGroupRefVO.vm_nic_uuid == nic_uuid):
        disown_sync(ref.uuid)
        ref.delete_instance()
    inv = nic.to_inventory()
    if inv.ip is not None:
        HINTS.lower(inv.l3_network_uuid, ip_to_int(inv.ip))
    UsedIpVO.delete().where(UsedIpVO.vm_nic_uuid == nic_uuid).execute()
    nic.delete_instance()
    disown_sync(nic_uuid)
    return ReleasedNic(nic=inv, security_group_uuids=groups)


def nic_to(nic: VmNicInventory, l2: L2NetworkInventory) -> NicTO:
    """How the hypervisor plugs the NIC: a port of the L2 network's bridge."""
    return NicTO(nic_uuid=nic.uuid, mac=nic.mac, device_id=nic.device_id, bridge=l2.bridge_name)


def nic_tos_sync(nics: Sequence[VmNicInventory]) -> list[NicTO]:
    """NicTOs of ``nics`` (database thread): each NIC's L2 network gives its bridge."""
    if not nics:
        return []
    l3_uuids = {n.l3_network_uuid for n in nics}
    rows = (L2NetworkVO.select(L2NetworkVO, L3NetworkVO.uuid.alias("l3_uuid"))
            .join(L3NetworkVO, on=(L3NetworkVO.l2_network_uuid == L2NetworkVO.uuid))
            .where(L3NetworkVO.uuid.in_(list(l3_uuids))).objects())
    l2_of: dict[str, L2NetworkInventory] = {}
    for row in rows:
        l2_of[row.l3_uuid] = L2NetworkInventory(uuid=row.uuid, name=row.name, zone_uuid=row.zone_uuid,
                                                physical_interface=row.physical_interface, type=row.type, vlan=row.vlan)
    return [nic_to(n, l2_of[n.l3_network_uuid]) for n in sorted(nics, key=lambda n: n.device_id)]


def vm_nics_sync(vm_uuid: str) -> list[VmNicInventory]:
    return [r.to_inventory() for r in VmNicVO.select().where(VmNicVO.vm_instance_uuid == vm_uuid)
            .order_by(VmNicVO.device_id)]


class NicApi:
    """NIC allocation and release for compute (service mixin)."""

    node: Any
    if TYPE_CHECKING:
        def strategy(self, name: str) -> IpAllocationStrategy: ...
        async def sync_dhcp(self, l3_uuid: str, host_uuids: Sequence[str] | None = None, strict: bool = False) -> None: ...
        async def prepare_host(self, host: HostInventory, l3_uuids: Sequence[str]) -> None: ...
        async def update_dhcp_entries(self, l3_uuid: str, add: Sequence[DhcpHost] = (),
                                      remove: Sequence[DhcpHost] = ()) -> None: ...
        async def reapply_groups(self, group_uuids: Iterable[str], also_vms: Iterable[str] = ()) -> Any: ...

    async def strategy_of(self, l3_uuid: str) -> IpAllocationStrategy:
        row = await self.node.db.run(lambda: L3NetworkVO.get_or_none(L3NetworkVO.uuid == l3_uuid))
        if row is None:
            raise SysErrors.exc("1004", f"no L3 network {l3_uuid}")
        return self.strategy(row.ip_allocation_strategy)

    async def create_nic(self, vm_uuid: str, l3_uuid: str, device_id: int, account_uuid: str | None,
                         taken: set[int] | None = None) -> VmNicInventory:
        def create() -> VmNicInventory:
            with write_transaction():
                return create_nic_sync(vm_uuid, l3_uuid, device_id, account_uuid, taken)

        return await self.node.db.run(create)  # type: ignore[no-any-return]

    async def assign_ip(self, nic: VmNicInventory, requested: str | None, strategy_name: str | None = None,
                        fresh: bool = False) -> VmNicInventory:
        """Give ``nic`` an address. ``strategy_name``: its L3 network's strategy when the caller
        read it already; ``fresh``: ``nic`` is as its creator returned it (not read again)."""
        if requested is not None:
            parse_ip(requested, "ip")
        strategy = (self.strategy(strategy_name) if strategy_name is not None
                    else await self.strategy_of(nic.l3_network_uuid))

        def assign() -> VmNicInventory:
            with write_transaction():
                return assign_ip_sync(nic.uuid, strategy, requested, nic if fresh else None)

        return await self.node.db.run(assign)  # type: ignore[no-any-return]

    async def allocate_nic(self, vm_uuid: str, l3_uuid: str, device_id: int = 0, requested_ip: str | None = None,
                           account_uuid: str | None = None) -> VmNicInventory:
        """A NIC with its MAC and address, in one transaction: both or neither."""
        if requested_ip is not None:
            parse_ip(requested_ip, "ip")
        strategy = await self.strategy_of(l3_uuid)

        def allocate() -> VmNicInventory:
            with write_transaction():
                nic = create_nic_sync(vm_uuid, l3_uuid, device_id, account_uuid)
                return assign_ip_sync(nic.uuid, strategy, requested_ip)

        return await self.node.db.run(allocate)  # type: ignore[no-any-return]

    async def release_nics(self, nic_uuids: Sequence[str]) -> list[ReleasedNic]:
        """Delete NICs (idempotent), then take them out of DHCP servers and security groups."""
        def release() -> list[ReleasedNic]:
            with write_transaction():
                return [r for r in (release_nic_sync(u) for u in nic_uuids) if r is not None]

        released = await self.node.db.run(release)
        entries: dict[str, list[DhcpHost]] = {}
        for r in released:
            if r.nic.ip is not None:
                entries.setdefault(r.nic.l3_network_uuid, []).append(
                    DhcpHost(mac=r.nic.mac, ip=r.nic.ip, name=hostname_of(r.nic.ip)))
        for l3_uuid, gone in entries.items():
            await self.update_dhcp_entries(l3_uuid, remove=gone)
        groups = {g for r in released for g in r.security_group_uuids}
        if groups:
            await self.reapply_groups(groups, {r.nic.vm_instance_uuid for r in released})
        return released

    async def vm_nics(self, vm_uuid: str) -> list[VmNicInventory]:
        return await self.node.db.run(vm_nics_sync, vm_uuid)  # type: ignore[no-any-return]

    @handles(AllocateVmNicMsg)
    async def handle_allocate_nic(self, msg: AllocateVmNicMsg) -> AllocateVmNicReply:
        nic = await self.allocate_nic(msg.vm_instance_uuid, msg.l3_network_uuid, msg.device_id, msg.ip,
                                      msg.account_uuid)
        try:
            vm = (await hosts.vms(self.node, [msg.vm_instance_uuid])).get(msg.vm_instance_uuid)
            host = await hosts.host(self.node, vm.host_uuid) if vm is not None and vm.host_uuid else None
            if host is not None:
                await self.prepare_host(host, [nic.l3_network_uuid])  # the bridge must exist before hot-plug
            if nic.ip is not None:
                await self.update_dhcp_entries(nic.l3_network_uuid,
                                               add=[DhcpHost(mac=nic.mac, ip=nic.ip, name=hostname_of(nic.ip))])
            nic_to_ = (await self.node.db.run(nic_tos_sync, [nic]))[0]
        except BaseException:
            await self.release_nics([nic.uuid])
            raise
        return AllocateVmNicReply(nic=nic, nic_to=nic_to_)

    @handles(ReleaseVmNicMsg)
    async def handle_release_nic(self, msg: ReleaseVmNicMsg) -> MessageReply:
        await self.release_nics([msg.nic_uuid])
        return MessageReply()
