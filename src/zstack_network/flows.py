"""The network service's part of compute's VM-create chain (ZStack's ``VmAllocateNicFlow`` and
``VmAllocateIpFlow``).

At ``ALLOCATE_NIC`` a NIC with a fresh MAC is created for each L3 network the VM asks for
(``spec.l3_network_uuids``, device ids in that order); at ``ALLOCATE_IP`` each gets an address,
the one of a ``staticIp::<l3NetworkUuid>::<ip>`` system tag of the VM if there is one. Each flow's
rollback undoes exactly its own work, so a create that fails later leaves no NIC and no address
behind. The flows find the node and the spec in ``data["node"]`` and ``data["spec"]``.
"""

from __future__ import annotations

from typing import Any

import attrs

from zstack_core.flow import Flow, FlowContribution
from zstack_core.header import VmCreateFlows, VmInstanceSpec, VmNicInventory
from zstack_core.tags import PatternedSystemTag

from .dhcp import DhcpHost, hostname_of
from .percreate import KEY, CreateState, L3Facts, load_l3_facts_sync, state_of

__all__ = ["STATIC_IP_TAG", "AllocateIpFlow", "AllocateNicFlow", "contributions", "static_ips"]

STATIC_IP_TAG = PatternedSystemTag(
    pattern="staticIp::{l3NetworkUuid}::{ip}", resource_type="VmInstance",
    description="the address a new VM gets on an L3 network instead of one IPAM picks")

_NICS = "network.nic_uuids"
_IPS = "network.ip_nic_uuids"


def static_ips(spec: VmInstanceSpec) -> dict[str, str]:
    """L3 network UUID -> requested address, from the VM's ``staticIp`` system tags."""
    out = {}
    for tag in spec.system_tags:
        tokens = STATIC_IP_TAG.tokens(tag)
        if tokens:
            out[tokens["l3NetworkUuid"]] = tokens["ip"]
    return out


def _service(data: dict[str, Any]) -> Any:
    return data["node"].services["network"]


def _state(data: dict[str, Any]) -> CreateState:
    """The create's carried state (made by the create check; a chain run without it starts one)."""
    spec: VmInstanceSpec = data["spec"]
    state = state_of(spec)
    if state is None:
        state = spec.extra[KEY] = CreateState()
    return state


async def _facts(data: dict[str, Any], l3_uuids: list[str]) -> dict[str, L3Facts]:
    state = _state(data)
    missing = [u for u in dict.fromkeys(l3_uuids) if u not in state.l3s]
    if missing:
        state.l3s.update(await data["node"].db.run(load_l3_facts_sync, missing))
    return state.l3s


def _entries(nics: list[VmNicInventory], facts: dict[str, L3Facts]) -> dict[str, list[DhcpHost]]:
    """The DHCP host entries of ``nics`` (those with an address, on L3 networks with DHCP)."""
    out: dict[str, list[DhcpHost]] = {}
    for n in nics:
        f = facts.get(n.l3_network_uuid)
        if n.ip is not None and (f is None or f.enable_dhcp):
            out.setdefault(n.l3_network_uuid, []).append(DhcpHost(mac=n.mac, ip=n.ip, name=hostname_of(n.ip)))
    return out


class AllocateNicFlow(Flow):
    """One NIC (MAC, device id) per requested L3 network."""

    name = "network.allocate-nic"

    async def run(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        created = data.setdefault(_NICS, [])
        # A VM being created has no NIC but the ones made here (compute serializes its work), so
        # the device ids taken are known; the create check read the L3 networks.
        state = state_of(spec)
        known = state is not None and all(u in state.l3s for u in spec.l3_network_uuids)
        taken = {n.device_id for n in spec.nics} if known and not spec.nics else None
        for device_id, l3_uuid in enumerate(spec.l3_network_uuids):
            nic = await service.create_nic(spec.vm.uuid, l3_uuid, device_id, spec.account_uuid, taken)
            created.append(nic.uuid)
            spec.nics.append(nic)
            if taken is not None:
                taken.add(nic.device_id)

    async def rollback(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        mine = set(data.get(_NICS, []))
        await _service(data).release_nics(list(mine))
        spec.nics[:] = [n for n in spec.nics if n.uuid not in mine]
        _state(data).nics_complete = False


class AllocateIpFlow(Flow):
    """An address for each NIC the previous flow made; DHCP servers learn them at once (one
    host entry each: see :meth:`.dhcp.DhcpApi.update_dhcp_entries`)."""

    name = "network.allocate-ip"

    async def run(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        requested = static_ips(spec)
        mine = set(data.get(_NICS, []))
        done = data.setdefault(_IPS, [])
        facts = await _facts(data, [n.l3_network_uuid for n in spec.nics if n.uuid in mine])
        for i, nic in enumerate(spec.nics):
            if nic.uuid not in mine:
                continue
            f = facts.get(nic.l3_network_uuid)
            spec.nics[i] = await service.assign_ip(nic, requested.get(nic.l3_network_uuid),
                                                   f.ip_allocation_strategy if f is not None else None, fresh=True)
            done.append(nic.uuid)
        state = _state(data)
        # spec.nics is now every NIC of the VM when all of them were made by this create.
        state.nics_complete = len(mine) == len(spec.nics)
        for l3_uuid, entries in _entries([n for n in spec.nics if n.uuid in mine], facts).items():
            await service.update_dhcp_entries(l3_uuid, add=entries)

    async def rollback(self, data: dict[str, Any]) -> None:
        from .nic import release_ip_sync

        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        done = data.get(_IPS, [])
        gone = [n for n in spec.nics if n.uuid in set(done)]

        def release() -> None:
            for nic_uuid in done:
                release_ip_sync(nic_uuid)

        await service.node.db.run(release)
        spec.nics[:] = [attrs.evolve(n, ip=None, netmask=None, gateway=None) if n.uuid in done else n
                        for n in spec.nics]
        _state(data).nics_complete = False
        for l3_uuid, entries in _entries(gone, _state(data).l3s).items():
            await service.update_dhcp_entries(l3_uuid, remove=entries)


def contributions() -> list[FlowContribution]:
    return [
        FlowContribution(chain=VmCreateFlows.CHAIN, flow=AllocateNicFlow(), order=VmCreateFlows.ALLOCATE_NIC),
        FlowContribution(chain=VmCreateFlows.CHAIN, flow=AllocateIpFlow(), order=VmCreateFlows.ALLOCATE_IP),
    ]
