"""What the network service reads once per VM create and carries to its later steps.

A create passes through the network service five times: the create check, the host allocator
filter, the NIC and IP flows, and (through compute's ``instantiate``) the domain-devices and
network-services hooks. Each used to read the VM's L3 networks, their L2 networks and the VM's
NICs again. The create check now reads the L3 networks with their L2 networks (attached clusters
included) once and leaves them in ``spec.extra["network"]`` (the spec is the same object along
the whole create); the flows record there that ``spec.nics`` is every NIC of the VM, and which
host was prepared, so the hooks need not read them again.

Only facts that cannot change unnoticed within one create are carried: an L3 network in use by
the VM's NIC cannot be deleted (``L3.1007``), and its L2 network cannot be deleted while the L3
network exists. Addresses are never carried: IPAM reads ranges and reservations inside the
transaction that takes the address.

Hooks called without such a spec (start, migrate, reboot of an existing VM) read everything as
before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import peewee

from zstack_core.header import L2NetworkInventory, VmInstanceSpec

from zstack_core.prepared import Markers, Prepared

__all__ = ["KEY", "CreateState", "L3Facts", "load_l3_facts_sync", "state_of"]

KEY = "network"


@attrs.frozen(kw_only=True)
class L3Facts:
    """An L3 network as a VM create needs it."""

    uuid: str
    name: str
    state: str
    ip_allocation_strategy: str
    enable_dhcp: bool
    l2: L2NetworkInventory


@attrs.define(kw_only=True)
class CreateState:
    """The network service's part of one VM create (``spec.extra["network"]``)."""

    l3s: dict[str, L3Facts] = attrs.field(factory=dict)
    nics_complete: bool = False
    """``spec.nics`` holds every NIC of the VM, with its address (set by the IP flow)."""
    prepared: set[tuple[str, frozenset[str]]] = attrs.field(factory=set)
    """(host UUID, L3 network UUIDs) already made ready on that host in this create."""


def state_of(spec: VmInstanceSpec) -> CreateState | None:
    state = spec.extra.get(KEY)
    return state if isinstance(state, CreateState) else None


def _facts_query(p: Markers) -> Any:
    from .models import L2NetworkClusterRefVO, L2NetworkVO, L3NetworkVO

    return (L3NetworkVO.select(L3NetworkVO.name, L3NetworkVO.state, L3NetworkVO.ip_allocation_strategy,
                               L3NetworkVO.enable_dhcp, L2NetworkVO.uuid, L2NetworkVO.name, L2NetworkVO.zone_uuid,
                               L2NetworkVO.physical_interface, L2NetworkVO.type, L2NetworkVO.vlan,
                               L2NetworkVO.description, L2NetworkClusterRefVO.cluster_uuid)
            .join(L2NetworkVO, on=(L3NetworkVO.l2_network_uuid == L2NetworkVO.uuid))
            .join(L2NetworkClusterRefVO, peewee.JOIN.LEFT_OUTER,
                  on=(L2NetworkClusterRefVO.l2_network_uuid == L2NetworkVO.uuid))
            .where(L3NetworkVO.uuid == p.l3).order_by(L2NetworkClusterRefVO.id))


_FACTS = Prepared(_facts_query)


def load_l3_facts_sync(l3_uuids: Sequence[str]) -> dict[str, L3Facts]:
    """The L3 networks among ``l3_uuids`` that exist, with their L2 networks and the clusters
    those are attached to (database thread; one statement per L3 network)."""
    out: dict[str, L3Facts] = {}
    for l3_uuid in dict.fromkeys(l3_uuids):
        rows = list(_FACTS.run(l3=l3_uuid))
        if not rows:
            continue
        name, state, strategy, dhcp, l2_uuid, l2_name, zone, iface, kind, vlan, description, _ = rows[0]
        l2 = L2NetworkInventory(uuid=l2_uuid, name=l2_name, zone_uuid=zone, physical_interface=iface, type=kind,
                                vlan=vlan, description=description,
                                attached_cluster_uuids=[r[-1] for r in rows if r[-1] is not None])
        out[l3_uuid] = L3Facts(uuid=l3_uuid, name=name, state=state, ip_allocation_strategy=strategy,
                               enable_dhcp=bool(dhcp), l2=l2)
    return out
