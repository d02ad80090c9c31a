"""Hook implementations of zstack-network.

The service (id ``network``) is assembled from one mixin per area: L2 networks (:mod:`.l2`), L3
networks and IP ranges (:mod:`.l3`), DHCP (:mod:`.dhcp`), VM NICs (:mod:`.nic`) and security
groups (:mod:`.security_group`). Extension points compute calls (VM create check, domain devices,
release, host connected, cascade...) are module-level hookimpls; the ones whose hookspec has no
``node`` argument find their node with :func:`zstack_core.plugins.current_node`, so several nodes
in one process each use their own service.

How it fits with compute (zstack-kvm), which it never imports:

* VM create: compute runs the ``vm-create`` chain; :mod:`.flows` contributes NIC and IP
  allocation; ``zstack_vm_create_check`` refuses unknown L3 networks or ones without an IP range;
  the host allocator filter keeps hosts whose cluster has the L3 networks' L2 networks attached.
* Each time compute defines a domain it calls ``zstack_vm_domain_devices``: the destination host
  gets the L2 bridges and DHCP servers it needs, and the spec gets one :class:`NicTO` per NIC.
* Attach/detach L3 network: compute sends ``AllocateVmNicMsg``/``ReleaseVmNicMsg``.
* Security groups: rules are computed here and applied through the backend compute registers for
  its hypervisor type, when a VM starts, migrates or stops and when rules or members change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from zstack_core import ErrorCodeSpace, ManagementNode, Service, hookimpl
from zstack_core.api import ApiRegistration
from zstack_core.check import ConsistencyCheck
from zstack_core.db import ModelRegistration
from zstack_core.errors import SysErrors
from zstack_core.flow import FlowContribution
from zstack_core.header import (
    CascadeAction,
    HostInventory,
    IpRangeInventory,
    L2NetworkInventory,
    L3NetworkInventory,
    VmInstanceInventory,
    VmInstanceSpec,
    VmNicInventory,
)
from zstack_core.header.backends import HostAllocatorFilter, IpAllocationStrategy
from zstack_core.plugins import current_node
from zstack_core.query import QueryableResource
from zstack_core.tags import PatternedSystemTag

from . import api, flows, hosts, percreate
from .consistency import CHECKS as CONSISTENCY_CHECKS
from .dhcp import DhcpApi
from .errors import L2Errors, L3Errors, SecurityGroupErrors
from .inventories import (
    ReservedIpRangeInventory,
    SecurityGroupInventory,
    SecurityGroupRuleInventory,
    VmNicSecurityGroupRefInventory,
)
from .ipam import FirstAvailable, Random, free_count_at_least_sync, ip_to_int, is_used_sync, load_addresses_sync, parse_ip
from .l2 import L2Api, l2_inventories
from .l3 import IP_ALLOCATION_STRATEGY_TAG, L3Api, l3_inventories
from .models import (
    REGISTRATION,
    DhcpNetworkHostRefVO,
    IpRangeVO,
    L2NetworkClusterRefVO,
    L2NetworkHostRefVO,
    L2NetworkVO,
    L3NetworkVO,
    ReservedIpRangeVO,
    SecurityGroupAppliedVO,
    SecurityGroupRuleVO,
    SecurityGroupVO,
    VmNicSecurityGroupRefVO,
    VmNicVO,
)
from .nic import NicApi, nic_to, nic_tos_sync
from .percreate import L3Facts, load_l3_facts_sync
from .security_group import SecurityGroupApi, security_group_inventories

__all__ = ["L2Errors", "L3Errors", "NetworkService", "SecurityGroupErrors"]

log = logging.getLogger("zstack.network")


class NetworkService(L2Api, L3Api, DhcpApi, NicApi, SecurityGroupApi, Service):
    """L2/L3 networks, IP ranges and IPAM, DHCP, VM NICs and security groups."""

    id = "network"
    start_order = 40

    async def start(self) -> None:
        for f in self.node.extension("host_allocator_filters"):
            if isinstance(f, L2NetworkAttachedFilter):
                f.node = self.node  # the filter is called by compute, outside any hook call

    # -- VM lifecycle ---------------------------------------------------------------------

    async def check_vm_create(self, spec: VmInstanceSpec) -> None:
        static = flows.static_ips(spec)
        for l3_uuid, ip in static.items():
            parse_ip(ip, "systemTags")
            if l3_uuid not in spec.l3_network_uuids:
                raise L3Errors.exc("1000", f"staticIp tag names L3 network {l3_uuid}, which the VM does not join")
        l3_uuids = list(dict.fromkeys(spec.l3_network_uuids))

        def check() -> dict[str, L3Facts]:
            facts = load_l3_facts_sync(l3_uuids)
            for l3_uuid in l3_uuids:
                row = facts.get(l3_uuid)
                if row is None:
                    raise SysErrors.exc("1004", f"no L3 network {l3_uuid}")
                if row.state != "Enabled":
                    raise L3Errors.exc("1000", f"L3 network {row.name} is {row.state}")
                addrs = load_addresses_sync(l3_uuid)
                if not addrs.ranges:
                    raise L3Errors.exc("1011", f"L3 network {row.name} has no IP range; add one first")
                wanted = sum(1 for u in spec.l3_network_uuids if u == l3_uuid)
                if l3_uuid in static:
                    value = ip_to_int(static[l3_uuid])
                    if addrs.excluded(value) or is_used_sync(l3_uuid, value):
                        raise L3Errors.exc("1004", f"{static[l3_uuid]} is not a free address of L3 network {row.name}")
                else:
                    free = free_count_at_least_sync(l3_uuid, addrs, wanted)
                    if free < wanted:
                        raise L3Errors.exc("1002", f"L3 network {row.name} has {free} free address(es), "
                                                   f"the VM needs {wanted}")
            return facts

        facts = await self.node.db.run(check)
        spec.extra[percreate.KEY] = percreate.CreateState(l3s=facts)

    async def _spec_nics(self, spec: VmInstanceSpec) -> list[VmNicInventory]:
        """The VM's NICs: carried by this create when its IP flow recorded them all, else read."""
        state = percreate.state_of(spec)
        if state is not None and state.nics_complete:
            return list(spec.nics)
        return await self.vm_nics(spec.vm.uuid)

    async def prepare_spec_host(self, spec: VmInstanceSpec, host: HostInventory, nics: Sequence[VmNicInventory]) -> None:
        """:meth:`prepare_host` for the VM's NICs, once per create and host (the create's
        domain-devices and network-services hooks both ask for it)."""
        l3_uuids = list(dict.fromkeys(n.l3_network_uuid for n in nics))
        state = percreate.state_of(spec)
        if state is None:
            await self.prepare_host(host, l3_uuids)
            return
        key = (host.uuid, frozenset(l3_uuids))
        if key in state.prepared:
            return
        l2_of = {u: state.l3s[u].l2 for u in l3_uuids if u in state.l3s}
        await self.prepare_host(host, l3_uuids, l2_of)
        state.prepared.add(key)

    async def domain_devices(self, spec: VmInstanceSpec) -> None:
        nics = await self._spec_nics(spec)
        if not nics:
            return
        host = spec.destination_host
        if host is None and spec.vm.host_uuid:
            host = await hosts.host(self.node, spec.vm.host_uuid)
        if host is not None:
            await self.prepare_spec_host(spec, host, nics)
        have = {t.nic_uuid for t in spec.nic_tos}
        state = percreate.state_of(spec)
        if state is not None and all(n.l3_network_uuid in state.l3s for n in nics):
            tos = [nic_to(n, state.l3s[n.l3_network_uuid].l2) for n in sorted(nics, key=lambda n: n.device_id)]
        else:
            tos = await self.node.db.run(nic_tos_sync, nics)
        spec.nic_tos.extend(t for t in tos if t.nic_uuid not in have)

    async def release_vm(self, spec: VmInstanceSpec, reason: str) -> None:
        nic_uuids = [n.uuid for n in await self.vm_nics(spec.vm.uuid)]
        await self.release_nics(nic_uuids)
        await self.apply_vms([spec.vm.uuid])  # takes away rules left on its host, if any
        log.debug("released %d NIC(s) of VM %s (%s)", len(nic_uuids), spec.vm.uuid, reason)

    # -- hosts ----------------------------------------------------------------------------

    async def host_connected(self, host: HostInventory) -> None:
        """Realize the host's cluster's L2 networks, repair its DHCP servers, re-apply rules."""

        def load() -> tuple[list[Any], list[str]]:
            rows = (L2NetworkVO.select().join(L2NetworkClusterRefVO, on=(
                L2NetworkClusterRefVO.l2_network_uuid == L2NetworkVO.uuid))
                .where(L2NetworkClusterRefVO.cluster_uuid == host.cluster_uuid))
            dhcp = [u for (u,) in DhcpNetworkHostRefVO.select(DhcpNetworkHostRefVO.l3_network_uuid)
                    .where(DhcpNetworkHostRefVO.host_uuid == host.uuid).tuples()]
            return l2_inventories(list(rows)), dhcp

        l2s, dhcp = await self.node.db.run(load)
        await self.realize_l2(l2s, host)
        for l3_uuid in dhcp:
            await self.sync_dhcp(l3_uuid, [host.uuid], strict=True)
        report = await self.reapply_host(host)
        for vm_uuid, error in report.errors.items():
            log.warning("security-group rules of VM %s on reconnected host %s: %s", vm_uuid, host.name, error)

    async def cascade(self, action: CascadeAction) -> None:
        if action.mode == "check":
            return  # nothing of ours stops a zone, cluster or host from going
        if action.parent_type == "Zone":
            l2_uuids = await self.node.db.run(lambda: [u for (u,) in L2NetworkVO.select(L2NetworkVO.uuid).where(
                L2NetworkVO.zone_uuid.in_(action.parent_uuids)).tuples()])
            for l2_uuid in l2_uuids:
                l3_uuids = await self.node.db.run(lambda u=l2_uuid: [x for (x,) in L3NetworkVO.select(L3NetworkVO.uuid)
                                                                     .where(L3NetworkVO.l2_network_uuid == u).tuples()])
                for l3_uuid in l3_uuids:
                    await self.node.tasks.run(f"l3-{l3_uuid}", lambda u=l3_uuid: self._delete_l3(u, force=True))
                await self.node.tasks.run(f"l2-{l2_uuid}", lambda u=l2_uuid: self._delete_l2(u))
        elif action.parent_type == "Cluster":
            await self.node.db.run(lambda: L2NetworkClusterRefVO.delete().where(
                L2NetworkClusterRefVO.cluster_uuid.in_(action.parent_uuids)).execute())
        elif action.parent_type == "Host":
            for host_uuid in action.parent_uuids:
                await self.clear_host(host_uuid)
            await self.forget_hosts(action.parent_uuids)

    async def clear_host(self, host_uuid: str) -> None:
        """Take what the network service put on a host that is being deleted (DHCP servers,
        bridges, libvirt networks) off it while compute can still reach it; best effort."""

        def load() -> tuple[list[str], list[Any]]:
            dhcp = [u for (u,) in DhcpNetworkHostRefVO.select(DhcpNetworkHostRefVO.l3_network_uuid)
                    .where(DhcpNetworkHostRefVO.host_uuid == host_uuid).tuples()]
            rows = (L2NetworkVO.select().join(L2NetworkHostRefVO, on=(
                L2NetworkHostRefVO.l2_network_uuid == L2NetworkVO.uuid)).where(L2NetworkHostRefVO.host_uuid == host_uuid))
            return dhcp, l2_inventories(list(rows))

        dhcp, l2s = await self.node.db.run(load)
        for l3_uuid in dhcp:
            await self.remove_dhcp(l3_uuid, [host_uuid])
        for l2 in l2s:
            await self.unrealize_l2(l2, [host_uuid])

    async def forget_hosts(self, host_uuids: Sequence[str]) -> None:
        def forget() -> None:
            L2NetworkHostRefVO.delete().where(L2NetworkHostRefVO.host_uuid.in_(list(host_uuids))).execute()
            DhcpNetworkHostRefVO.delete().where(DhcpNetworkHostRefVO.host_uuid.in_(list(host_uuids))).execute()
            SecurityGroupAppliedVO.delete().where(SecurityGroupAppliedVO.host_uuid.in_(list(host_uuids))).execute()

        await self.node.db.run(forget)


class L2NetworkAttachedFilter(HostAllocatorFilter):
    """Keeps hosts whose cluster has every L2 network the VM's L3 networks sit on (ZStack's
    ``L2NetworkHostAllocatorFilter``)."""

    name = "L2NetworkAttachedFilter"

    def __init__(self) -> None:
        self.node: ManagementNode | None = None

    async def filter(self, candidates: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        node = self.node or current_node()
        l3_uuids = list(dict.fromkeys(spec.l3_network_uuids))
        if not l3_uuids or not candidates or node is None:
            return candidates

        def clusters() -> set[str] | None:
            l2_uuids = {u for (u,) in L3NetworkVO.select(L3NetworkVO.l2_network_uuid)
                        .where(L3NetworkVO.uuid.in_(l3_uuids)).tuples()}
            ok: set[str] | None = None
            for l2_uuid in l2_uuids:
                attached = {c for (c,) in L2NetworkClusterRefVO.select(L2NetworkClusterRefVO.cluster_uuid)
                            .where(L2NetworkClusterRefVO.l2_network_uuid == l2_uuid).tuples()}
                ok = attached if ok is None else ok & attached
            return ok

        state = percreate.state_of(spec)
        if state is not None and all(u in state.l3s for u in l3_uuids):
            ok: set[str] | None = None  # read by the create check moments ago
            for l2 in {state.l3s[u].l2.uuid: state.l3s[u].l2 for u in l3_uuids}.values():
                ok = set(l2.attached_cluster_uuids) if ok is None else ok & set(l2.attached_cluster_uuids)
        else:
            ok = await node.db.run(clusters)
        return candidates if ok is None else [h for h in candidates if h.cluster_uuid in ok]


def _service() -> NetworkService:
    node = current_node()
    if node is None:  # pragma: no cover - the kernel sets it for every hook call
        raise RuntimeError("zstack-network hook called outside a node's hook call")
    service = node.services["network"]
    assert isinstance(service, NetworkService)
    return service


# -- registration hooks -----------------------------------------------------------------------


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [L2Errors, L3Errors, SecurityGroupErrors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [NetworkService()]


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    return list(api.registrations())


@hookimpl
def zstack_models() -> Sequence[ModelRegistration]:
    return [REGISTRATION]


@hookimpl
def zstack_consistency_checks() -> Sequence[ConsistencyCheck]:
    """Used IPs against NICs, NICs against VMs (see consistency.py)."""
    return list(CONSISTENCY_CHECKS)


@hookimpl
def zstack_flows() -> Sequence[FlowContribution]:
    return flows.contributions()


@hookimpl
def zstack_system_tags() -> Sequence[PatternedSystemTag]:
    return [IP_ALLOCATION_STRATEGY_TAG, flows.STATIC_IP_TAG]


@hookimpl
def zstack_ip_allocation_strategies() -> Sequence[IpAllocationStrategy]:
    return [FirstAvailable(), Random()]


@hookimpl
def zstack_host_allocator_filters() -> Sequence[HostAllocatorFilter]:
    return [L2NetworkAttachedFilter()]


@hookimpl
def zstack_queryable_resources() -> Sequence[QueryableResource]:
    return [
        QueryableResource(name="L2Network", model=L2NetworkVO, inventory=L2NetworkInventory,
                          to_inventories=l2_inventories),
        QueryableResource(name="L3Network", model=L3NetworkVO, inventory=L3NetworkInventory,
                          to_inventories=l3_inventories),
        QueryableResource(name="IpRange", model=IpRangeVO, inventory=IpRangeInventory),
        QueryableResource(name="ReservedIpRange", model=ReservedIpRangeVO, inventory=ReservedIpRangeInventory),
        QueryableResource(name="VmNic", model=VmNicVO, inventory=VmNicInventory),
        QueryableResource(name="SecurityGroup", model=SecurityGroupVO, inventory=SecurityGroupInventory,
                          to_inventories=security_group_inventories),
        QueryableResource(name="SecurityGroupRule", model=SecurityGroupRuleVO, inventory=SecurityGroupRuleInventory),
        QueryableResource(name="VmNicInSecurityGroup", model=VmNicSecurityGroupRefVO,
                          inventory=VmNicSecurityGroupRefInventory),
    ]


# -- extension points -------------------------------------------------------------------------


@hookimpl
async def zstack_vm_create_check(spec: VmInstanceSpec) -> None:
    await _service().check_vm_create(spec)


@hookimpl
async def zstack_vm_domain_devices(spec: VmInstanceSpec) -> None:
    await _service().domain_devices(spec)


@hookimpl
async def zstack_vm_release_resource(spec: VmInstanceSpec, reason: str) -> None:
    await _service().release_vm(spec, reason)


@hookimpl
async def zstack_network_services_apply(spec: VmInstanceSpec) -> None:
    service = _service()
    host = spec.destination_host
    if host is None and spec.vm.host_uuid:
        host = await hosts.host(service.node, spec.vm.host_uuid)
    if host is not None:
        await service.prepare_spec_host(spec, host, await service._spec_nics(spec))


@hookimpl
async def zstack_vm_state_changed(vm: VmInstanceInventory, old_state: str, new_state: str) -> None:
    # Rules follow the VM: applied when it starts running (create, start, resume, migrate...),
    # taken away when it stops running. The engine skips VMs whose rules did not change.
    if "Running" in (old_state, new_state):
        await _service().apply_vms([vm.uuid])


@hookimpl
async def zstack_vm_after_migrate(vm: VmInstanceInventory, source_host_uuid: str) -> None:
    await _service().apply_vms([vm.uuid])  # moves the rules: applied on the new host, cleaned on the old


@hookimpl
async def zstack_host_connected(host: HostInventory, first_time: bool) -> None:
    await _service().host_connected(host)


@hookimpl
async def zstack_host_after_delete(host: HostInventory) -> None:
    await _service().forget_hosts([host.uuid])


@hookimpl
async def zstack_cascade(action: CascadeAction) -> None:
    await _service().cascade(action)
