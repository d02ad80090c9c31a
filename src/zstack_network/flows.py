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
from zstack_core.header import VmCreateFlows, VmInstanceSpec
from zstack_core.tags import PatternedSystemTag

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


class AllocateNicFlow(Flow):
    """One NIC (MAC, device id) per requested L3 network."""

    name = "network.allocate-nic"

    async def run(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        created = data.setdefault(_NICS, [])
        for device_id, l3_uuid in enumerate(spec.l3_network_uuids):
            nic = await service.create_nic(spec.vm.uuid, l3_uuid, device_id, spec.account_uuid)
            created.append(nic.uuid)
            spec.nics.append(nic)

    async def rollback(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        mine = set(data.get(_NICS, []))
        await _service(data).release_nics(list(mine))
        spec.nics[:] = [n for n in spec.nics if n.uuid not in mine]


class AllocateIpFlow(Flow):
    """An address for each NIC the previous flow made; DHCP servers learn them at once."""

    name = "network.allocate-ip"

    async def run(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        requested = static_ips(spec)
        mine = set(data.get(_NICS, []))
        done = data.setdefault(_IPS, [])
        for i, nic in enumerate(spec.nics):
            if nic.uuid not in mine:
                continue
            spec.nics[i] = await service.assign_ip(nic, requested.get(nic.l3_network_uuid))
            done.append(nic.uuid)
        for l3_uuid in dict.fromkeys(n.l3_network_uuid for n in spec.nics if n.uuid in mine):
            await service.sync_dhcp(l3_uuid)

    async def rollback(self, data: dict[str, Any]) -> None:
        from .nic import release_ip_sync

        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        done = data.get(_IPS, [])

        def release() -> None:
            for nic_uuid in done:
                release_ip_sync(nic_uuid)

        await service.node.db.run(release)
        spec.nics[:] = [attrs.evolve(n, ip=None, netmask=None, gateway=None) if n.uuid in done else n
                        for n in spec.nics]
        for l3_uuid in dict.fromkeys(n.l3_network_uuid for n in spec.nics if n.uuid in set(done)):
            await service.sync_dhcp(l3_uuid)


def contributions() -> list[FlowContribution]:
    return [
        FlowContribution(chain=VmCreateFlows.CHAIN, flow=AllocateNicFlow(), order=VmCreateFlows.ALLOCATE_NIC),
        FlowContribution(chain=VmCreateFlows.CHAIN, flow=AllocateIpFlow(), order=VmCreateFlows.ALLOCATE_IP),
    ]
