"""L3 networks, their DNS servers, IP ranges and reserved addresses.

An L3 network is one IPv4 subnet: every range of it shares one CIDR and one gateway (the DHCP
server of the network answers for one subnet), ranges of the L3 networks of one L2 network never
overlap (they share a broadcast domain), and a gateway is never handed out.

Deleting a range whose addresses are in use is refused (``L3.1006``), not cascaded: cascading
would hot-unplug NICs of running VMs as a side effect of editing an address pool. Detach the L3
network from those VMs first. Deleting an L3 network with NICs is refused for the same reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from zstack_core.errors import SysErrors, invalid_argument
from zstack_core.header import IpRangeInventory, L3NetworkInventory
from zstack_core.ownership import disown_sync, own_sync
from zstack_core.service import handles
from zstack_core.tags import PatternedSystemTag

from .api import (
    APIAddDnsToL3NetworkMsg,
    APIAddIpRangeByNetworkCidrMsg,
    APIAddIpRangeMsg,
    APIAddReservedIpRangeMsg,
    APICheckIpAvailabilityMsg,
    APICheckIpAvailabilityReply,
    APICreateL3NetworkMsg,
    APIDeleteIpRangeMsg,
    APIDeleteL3NetworkMsg,
    APIDeleteReservedIpRangeMsg,
    APIGetFreeIpMsg,
    APIGetFreeIpReply,
    APIIpRangeEvent,
    APIL3NetworkEvent,
    APIRemoveDnsFromL3NetworkMsg,
    APIReservedIpRangeEvent,
)
from .errors import L3Errors
from .inventories import FreeIpInventory, ReservedIpRangeInventory
from .ipam import ParsedRange, free_space_sync, int_to_ip, ip_to_int, parse_ip, parse_range, range_of_cidr
from .l2 import check_resource_uuid
from zstack_core.prepared import Prepared
from .models import (
    IpRangeVO,
    L2NetworkVO,
    L3NetworkDnsVO,
    L3NetworkVO,
    ReservedIpRangeVO,
    SecurityGroupL3NetworkRefVO,
    UsedIpVO,
    VmNicVO,
    lock_row,
    write_transaction,
)

__all__ = ["IP_ALLOCATION_STRATEGY_TAG", "L3Api", "l3_inventories", "l3_inventory_sync"]

IP_ALLOCATION_STRATEGY_TAG = PatternedSystemTag(
    pattern="ipAllocationStrategy::{strategy}", resource_type="L3Network",
    description="the IP allocation strategy of a new L3 network (FirstAvailable, Random, or a plugin's)")

_DOMAIN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                     r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_FREE_IPS = 10_000


_RANGE_FIELDS = [a.name for a in attrs.fields(IpRangeInventory)]
_DNS_OF_ONE = Prepared(lambda p: L3NetworkDnsVO.select(L3NetworkDnsVO.dns).where(L3NetworkDnsVO.l3_network_uuid == p.l3)
                       .order_by(L3NetworkDnsVO.position, L3NetworkDnsVO.id))
_RANGES_OF_ONE = Prepared(lambda p: IpRangeVO.select(*[getattr(IpRangeVO, f) for f in _RANGE_FIELDS])
                          .where(IpRangeVO.l3_network_uuid == p.l3).order_by(IpRangeVO.start_int))


def l3_inventories(rows: list[L3NetworkVO]) -> list[L3NetworkInventory]:
    """Rows as inventories with DNS servers and IP ranges (database thread; two queries)."""
    if not rows:
        return []
    uuids = [r.uuid for r in rows]
    dns: dict[str, list[str]] = {u: [] for u in uuids}
    ranges: dict[str, list[IpRangeInventory]] = {u: [] for u in uuids}
    if len(uuids) == 1:  # compute's create check asks for one L3 network per VM create
        for (server,) in _DNS_OF_ONE.run(l3=uuids[0]):
            dns[uuids[0]].append(server)
        for values in _RANGES_OF_ONE.run(l3=uuids[0]):
            ranges[uuids[0]].append(IpRangeInventory(**dict(zip(_RANGE_FIELDS, values))))
    else:
        for l3_uuid, server in (L3NetworkDnsVO.select(L3NetworkDnsVO.l3_network_uuid, L3NetworkDnsVO.dns)
                                .where(L3NetworkDnsVO.l3_network_uuid.in_(uuids))
                                .order_by(L3NetworkDnsVO.position, L3NetworkDnsVO.id).tuples()):
            dns[l3_uuid].append(server)
        for r in IpRangeVO.select().where(IpRangeVO.l3_network_uuid.in_(uuids)).order_by(IpRangeVO.start_int):
            ranges[r.l3_network_uuid].append(r.to_inventory())
    return [L3NetworkInventory(uuid=r.uuid, name=r.name, l2_network_uuid=r.l2_network_uuid, zone_uuid=r.zone_uuid,
                               dns=dns[r.uuid], dns_domain=r.dns_domain, enable_dhcp=r.enable_dhcp,
                               description=r.description, type=r.type, state=r.state,
                               ip_allocation_strategy=r.ip_allocation_strategy, ip_ranges=ranges[r.uuid])
            for r in rows]


def l3_inventory_sync(uuid: str) -> L3NetworkInventory:
    row = L3NetworkVO.get_or_none(L3NetworkVO.uuid == uuid)
    if row is None:
        raise SysErrors.exc("1004", f"no L3 network {uuid}")
    return l3_inventories([row])[0]


def _l3_row(uuid: str) -> L3NetworkVO:
    row = lock_row(L3NetworkVO, uuid)
    if row is None:
        raise SysErrors.exc("1004", f"no L3 network {uuid}")
    return row


def _check_dns(server: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(server.strip()))
    except ValueError:
        raise invalid_argument(f"DNS server {server!r} is not an IP address", field) from None


def add_range_sync(l3_uuid: str, parsed: ParsedRange, netmask: str, name: str, description: str,
                   resource_uuid: str | None, account_uuid: str | None) -> IpRangeInventory:
    """Insert a validated range after the checks that need the database (database thread)."""
    with write_transaction():
        l3 = _l3_row(l3_uuid)  # locked: two ranges added at once are checked one after the other
        cidr = str(parsed.network)
        gateway = int_to_ip(parsed.gateway)
        mine = list(IpRangeVO.select().where(IpRangeVO.l3_network_uuid == l3_uuid))
        if mine and (mine[0].network_cidr != cidr or mine[0].gateway != gateway):
            raise L3Errors.exc("1008", f"L3 network {l3.name} is {mine[0].network_cidr} with gateway {mine[0].gateway}; "
                                       f"the new range is {cidr} with gateway {gateway}")
        siblings = (IpRangeVO.select(IpRangeVO, L3NetworkVO.name.alias("l3_name"))
                    .join(L3NetworkVO, on=(IpRangeVO.l3_network_uuid == L3NetworkVO.uuid))
                    .where((L3NetworkVO.l2_network_uuid == l3.l2_network_uuid)
                           & (IpRangeVO.start_int <= parsed.end) & (IpRangeVO.end_int >= parsed.start)).objects())
        other = siblings.first()
        if other is not None:
            raise L3Errors.exc("1001", f"{int_to_ip(parsed.start)}-{int_to_ip(parsed.end)} overlaps range "
                                       f"{other.start_ip}-{other.end_ip} ({other.uuid}) of L3 network "
                                       f"{other.l3_name}")
        used_gateway = UsedIpVO.get_or_none((UsedIpVO.l3_network_uuid == l3_uuid) & (UsedIpVO.ip_int == parsed.gateway))
        if used_gateway is not None:
            raise L3Errors.exc("1004", f"gateway {gateway} is in use by NIC {used_gateway.vm_nic_uuid}")
        kwargs = {"uuid": resource_uuid} if resource_uuid else {}
        row = IpRangeVO.create(l3_network_uuid=l3_uuid, name=name, description=description,
                               start_ip=int_to_ip(parsed.start), end_ip=int_to_ip(parsed.end), netmask=netmask,
                               gateway=gateway, network_cidr=cidr, start_int=parsed.start, end_int=parsed.end, **kwargs)
        own_sync(row.uuid, "IpRange", account_uuid)
        return row.to_inventory()  # type: ignore[no-any-return]


class L3Api:
    """L3 handlers, mixed into the network service."""

    node: Any
    if TYPE_CHECKING:
        async def sync_dhcp(self, l3_uuid: str, host_uuids: Sequence[str] | None = None,
                            strict: bool = False) -> None: ...
        async def remove_dhcp(self, l3_uuid: str, host_uuids: Sequence[str] | None = None) -> None: ...

    def strategy_names(self) -> list[str]:
        return [s.name for s in self.node.extension("ip_allocation_strategies")]

    def strategy(self, name: str) -> Any:
        for s in self.node.extension("ip_allocation_strategies"):
            if s.name == name:
                return s
        raise L3Errors.exc("1009", f"no IP allocation strategy {name!r}; registered: {', '.join(self.strategy_names())}")

    @handles(APICreateL3NetworkMsg)
    async def create_l3(self, msg: APICreateL3NetworkMsg) -> APIL3NetworkEvent:
        check_resource_uuid(msg.resource_uuid)
        if not msg.name.strip():
            raise invalid_argument("name must not be empty", "name")
        if msg.type != "L3BasicNetwork":
            raise invalid_argument(f"type {msg.type!r} is not supported; use L3BasicNetwork", "type")
        dns = [_check_dns(d, f"dns[{i}]") for i, d in enumerate(msg.dns)]
        if len(set(dns)) != len(dns):
            raise invalid_argument("dns lists a server twice", "dns")
        if msg.dns_domain is not None and not _DOMAIN.fullmatch(msg.dns_domain):
            raise invalid_argument(f"{msg.dns_domain!r} is not a domain name", "dnsDomain")
        strategy = msg.ip_allocation_strategy
        if strategy is None:
            for tag in msg.system_tags:
                tokens = IP_ALLOCATION_STRATEGY_TAG.tokens(tag)
                if tokens:
                    strategy = tokens["strategy"]
        strategy = strategy or "FirstAvailable"
        self.strategy(strategy)

        def create() -> L3NetworkInventory:
            with write_transaction():
                l2 = L2NetworkVO.get_or_none(L2NetworkVO.uuid == msg.l2_network_uuid)
                if l2 is None:
                    raise SysErrors.exc("1004", f"no L2 network {msg.l2_network_uuid}")
                kwargs = {"uuid": msg.resource_uuid} if msg.resource_uuid else {}
                row = L3NetworkVO.create(name=msg.name, description=msg.description, l2_network_uuid=l2.uuid,
                                         zone_uuid=l2.zone_uuid, type=msg.type, dns_domain=msg.dns_domain,
                                         enable_dhcp=msg.enable_dhcp, ip_allocation_strategy=strategy, **kwargs)
                for i, server in enumerate(dns):
                    L3NetworkDnsVO.create(l3_network_uuid=row.uuid, dns=server, position=i)
                if msg.system_tags:
                    self.node.tags.create_sync(row.uuid, "L3Network", msg.system_tags)
                own_sync(row.uuid, "L3Network", msg.account_uuid)
                return l3_inventories([row])[0]

        return APIL3NetworkEvent(inventory=await self.node.db.run(create))

    @handles(APIDeleteL3NetworkMsg)
    async def delete_l3(self, msg: APIDeleteL3NetworkMsg) -> APIL3NetworkEvent:
        return await self.node.tasks.run(f"l3-{msg.uuid}", lambda: self._delete_l3(msg.uuid))

    async def _delete_l3(self, uuid: str, force: bool = False) -> APIL3NetworkEvent:
        inv = await self.node.db.run(l3_inventory_sync, uuid)
        nics = await self.node.db.run(lambda: VmNicVO.select().where(VmNicVO.l3_network_uuid == uuid).count())
        if nics and not force:
            raise L3Errors.exc("1007", f"{nics} VM NIC(s) use L3 network {inv.name}; detach it from their VMs first")
        await self.remove_dhcp(uuid)

        def delete() -> None:
            with write_transaction():
                if force:
                    for nic in VmNicVO.select().where(VmNicVO.l3_network_uuid == uuid):
                        nic.delete_instance()
                        disown_sync(nic.uuid)
                elif VmNicVO.select().where(VmNicVO.l3_network_uuid == uuid).exists():
                    raise L3Errors.exc("1007", f"L3 network {inv.name} got a NIC while being deleted")
                UsedIpVO.delete().where(UsedIpVO.l3_network_uuid == uuid).execute()
                for r in IpRangeVO.select(IpRangeVO.uuid).where(IpRangeVO.l3_network_uuid == uuid):
                    disown_sync(r.uuid)
                IpRangeVO.delete().where(IpRangeVO.l3_network_uuid == uuid).execute()
                ReservedIpRangeVO.delete().where(ReservedIpRangeVO.l3_network_uuid == uuid).execute()
                SecurityGroupL3NetworkRefVO.delete().where(SecurityGroupL3NetworkRefVO.l3_network_uuid == uuid).execute()
                L3NetworkDnsVO.delete().where(L3NetworkDnsVO.l3_network_uuid == uuid).execute()
                L3NetworkVO.delete().where(L3NetworkVO.uuid == uuid).execute()
                self.node.tags.delete_sync(uuid)
                disown_sync(uuid)

        await self.node.db.run(delete)
        return APIL3NetworkEvent(inventory=inv)

    @handles(APIAddDnsToL3NetworkMsg)
    async def add_dns(self, msg: APIAddDnsToL3NetworkMsg) -> APIL3NetworkEvent:
        server = _check_dns(msg.dns, "dns")

        def add() -> L3NetworkInventory:
            with write_transaction():
                _l3_row(msg.l3_network_uuid)
                if L3NetworkDnsVO.get_or_none((L3NetworkDnsVO.l3_network_uuid == msg.l3_network_uuid)
                                              & (L3NetworkDnsVO.dns == server)) is not None:
                    raise L3Errors.exc("1000", f"DNS server {server} is already set on L3 network {msg.l3_network_uuid}")
                last = (L3NetworkDnsVO.select(L3NetworkDnsVO.position)
                        .where(L3NetworkDnsVO.l3_network_uuid == msg.l3_network_uuid)
                        .order_by(L3NetworkDnsVO.position.desc()).scalar())
                L3NetworkDnsVO.create(l3_network_uuid=msg.l3_network_uuid, dns=server, position=(last or 0) + 1)
            return l3_inventory_sync(msg.l3_network_uuid)

        inv = await self.node.db.run(add)
        await self.sync_dhcp(inv.uuid)
        return APIL3NetworkEvent(inventory=inv)

    @handles(APIRemoveDnsFromL3NetworkMsg)
    async def remove_dns(self, msg: APIRemoveDnsFromL3NetworkMsg) -> APIL3NetworkEvent:
        server = _check_dns(msg.dns, "dns")

        def remove() -> L3NetworkInventory:
            with write_transaction():
                _l3_row(msg.l3_network_uuid)
                n = L3NetworkDnsVO.delete().where((L3NetworkDnsVO.l3_network_uuid == msg.l3_network_uuid)
                                                  & (L3NetworkDnsVO.dns == server)).execute()
                if not n:
                    raise L3Errors.exc("1000", f"DNS server {server} is not set on L3 network {msg.l3_network_uuid}")
            return l3_inventory_sync(msg.l3_network_uuid)

        inv = await self.node.db.run(remove)
        await self.sync_dhcp(inv.uuid)
        return APIL3NetworkEvent(inventory=inv)

    # -- IP ranges ----------------------------------------------------------------------------

    @handles(APIAddIpRangeMsg)
    async def add_ip_range(self, msg: APIAddIpRangeMsg) -> APIIpRangeEvent:
        check_resource_uuid(msg.resource_uuid)
        parsed = parse_range(msg.start_ip, msg.end_ip, msg.netmask, msg.gateway)
        netmask = str(parsed.network.netmask)
        inv = await self.node.db.run(add_range_sync, msg.l3_network_uuid, parsed, netmask, msg.name, msg.description,
                                     msg.resource_uuid, msg.account_uuid)
        await self.sync_dhcp(msg.l3_network_uuid)
        return APIIpRangeEvent(inventory=inv)

    @handles(APIAddIpRangeByNetworkCidrMsg)
    async def add_ip_range_by_cidr(self, msg: APIAddIpRangeByNetworkCidrMsg) -> APIIpRangeEvent:
        check_resource_uuid(msg.resource_uuid)
        parsed, netmask = range_of_cidr(msg.network_cidr, msg.gateway)
        inv = await self.node.db.run(add_range_sync, msg.l3_network_uuid, parsed, netmask, msg.name, msg.description,
                                     msg.resource_uuid, msg.account_uuid)
        await self.sync_dhcp(msg.l3_network_uuid)
        return APIIpRangeEvent(inventory=inv)

    @handles(APIDeleteIpRangeMsg)
    async def delete_ip_range(self, msg: APIDeleteIpRangeMsg) -> APIIpRangeEvent:
        def delete() -> IpRangeInventory:
            with write_transaction():
                row = IpRangeVO.get_or_none(IpRangeVO.uuid == msg.uuid)
                if row is None:
                    raise SysErrors.exc("1004", f"no IP range {msg.uuid}")
                _l3_row(row.l3_network_uuid)
                used = list(UsedIpVO.select(UsedIpVO.ip).where(UsedIpVO.ip_range_uuid == msg.uuid)
                            .order_by(UsedIpVO.ip_int).limit(5).tuples())
                if used:
                    count = UsedIpVO.select().where(UsedIpVO.ip_range_uuid == msg.uuid).count()
                    raise L3Errors.exc("1006", f"{count} address(es) of IP range {row.start_ip}-{row.end_ip} are in use "
                                               f"(e.g. {', '.join(ip for (ip,) in used)}); release them first")
                inv = row.to_inventory()
                row.delete_instance()
                disown_sync(msg.uuid)
                return inv  # type: ignore[no-any-return]

        inv = await self.node.db.run(delete)
        await self.sync_dhcp(inv.l3_network_uuid)
        return APIIpRangeEvent(inventory=inv)

    @handles(APIAddReservedIpRangeMsg)
    async def add_reserved_ip_range(self, msg: APIAddReservedIpRangeMsg) -> APIReservedIpRangeEvent:
        start = int(parse_ip(msg.start_ip, "startIp"))
        end = int(parse_ip(msg.end_ip, "endIp"))
        if start > end:
            raise L3Errors.exc("1005", f"startIp {msg.start_ip} is after endIp {msg.end_ip}")

        def add() -> ReservedIpRangeInventory:
            with write_transaction():
                _l3_row(msg.l3_network_uuid)
                used = list(UsedIpVO.select(UsedIpVO.ip).where(
                    (UsedIpVO.l3_network_uuid == msg.l3_network_uuid) & (UsedIpVO.ip_int >= start)
                    & (UsedIpVO.ip_int <= end)).order_by(UsedIpVO.ip_int).limit(5).tuples())
                if used:
                    raise L3Errors.exc("1004", f"{', '.join(ip for (ip,) in used)} in {int_to_ip(start)}-{int_to_ip(end)} "
                                               "are in use; release them before reserving")
                row = ReservedIpRangeVO.create(l3_network_uuid=msg.l3_network_uuid, start_ip=int_to_ip(start),
                                               end_ip=int_to_ip(end), start_int=start, end_int=end,
                                               description=msg.description)
                own_sync(row.uuid, "ReservedIpRange", msg.account_uuid)
                return row.to_inventory()  # type: ignore[no-any-return]

        return APIReservedIpRangeEvent(inventory=await self.node.db.run(add))

    @handles(APIDeleteReservedIpRangeMsg)
    async def delete_reserved_ip_range(self, msg: APIDeleteReservedIpRangeMsg) -> APIReservedIpRangeEvent:
        def delete() -> ReservedIpRangeInventory:
            with write_transaction():
                row = ReservedIpRangeVO.get_or_none(ReservedIpRangeVO.uuid == msg.uuid)
                if row is None:
                    raise SysErrors.exc("1004", f"no reserved IP range {msg.uuid}")
                inv = row.to_inventory()
                row.delete_instance()
                disown_sync(msg.uuid)
                return inv  # type: ignore[no-any-return]

        return APIReservedIpRangeEvent(inventory=await self.node.db.run(delete))

    @handles(APIGetFreeIpMsg)
    async def get_free_ip(self, msg: APIGetFreeIpMsg) -> APIGetFreeIpReply:
        if (msg.l3_network_uuid is None) == (msg.ip_range_uuid is None):
            raise invalid_argument("give exactly one of l3NetworkUuid and ipRangeUuid", "l3NetworkUuid")
        if not 0 <= msg.limit <= MAX_FREE_IPS:
            raise invalid_argument(f"limit must be within 0..{MAX_FREE_IPS}", "limit")
        start = int(parse_ip(msg.start, "start")) if msg.start else 0

        def free() -> list[FreeIpInventory]:
            l3_uuid = msg.l3_network_uuid
            if msg.ip_range_uuid is not None:
                rng = IpRangeVO.get_or_none(IpRangeVO.uuid == msg.ip_range_uuid)
                if rng is None:
                    raise SysErrors.exc("1004", f"no IP range {msg.ip_range_uuid}")
                l3_uuid = rng.l3_network_uuid
            elif L3NetworkVO.get_or_none(L3NetworkVO.uuid == l3_uuid) is None:
                raise SysErrors.exc("1004", f"no L3 network {l3_uuid}")
            assert l3_uuid is not None
            space, ranges, _ = free_space_sync(l3_uuid, msg.ip_range_uuid)
            out: list[FreeIpInventory] = []
            for value in space.from_value(start):
                if len(out) >= msg.limit:
                    break
                rng = next(r for r in ranges if r.start_int <= value <= r.end_int)
                out.append(FreeIpInventory(ip=int_to_ip(value), ip_range_uuid=rng.uuid, netmask=rng.netmask,
                                           gateway=rng.gateway))
            return out

        return APIGetFreeIpReply(inventories=await self.node.db.run(free))

    @handles(APICheckIpAvailabilityMsg)
    async def check_ip(self, msg: APICheckIpAvailabilityMsg) -> APICheckIpAvailabilityReply:
        value = int(parse_ip(msg.ip, "ip"))

        def check() -> APICheckIpAvailabilityReply:
            if L3NetworkVO.get_or_none(L3NetworkVO.uuid == msg.l3_network_uuid) is None:
                raise SysErrors.exc("1004", f"no L3 network {msg.l3_network_uuid}")
            ranges = list(IpRangeVO.select().where(IpRangeVO.l3_network_uuid == msg.l3_network_uuid))
            if any(ip_to_int(r.gateway) == value for r in ranges):
                return APICheckIpAvailabilityReply(available=False, reason="gateway")
            if not any(r.start_int <= value <= r.end_int for r in ranges):
                return APICheckIpAvailabilityReply(available=False, reason="not in any IP range")
            if UsedIpVO.select().where((UsedIpVO.l3_network_uuid == msg.l3_network_uuid)
                                       & (UsedIpVO.ip_int == value)).exists():
                return APICheckIpAvailabilityReply(available=False, reason="in use")
            if ReservedIpRangeVO.select().where((ReservedIpRangeVO.l3_network_uuid == msg.l3_network_uuid)
                                                & (ReservedIpRangeVO.start_int <= value)
                                                & (ReservedIpRangeVO.end_int >= value)).exists():
                return APICheckIpAvailabilityReply(available=False, reason="reserved")
            return APICheckIpAvailabilityReply(available=True)

        return await self.node.db.run(check)
