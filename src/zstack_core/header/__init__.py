"""The contracts services share (ZStack's ``header`` module).

Compute, storage and network never import each other. When one needs the other, it speaks in the
types defined here: inventories (what a resource looks like to everyone else), transfer objects
handed to the hypervisor (:class:`DiskTO`, :class:`NicTO`), the VM-creation spec that flows
contributed by several services fill in turn, and the names and positions of shared flow chains.
"""

from .compute import (
    ClusterInventory,
    ConsoleAddress,
    HostInventory,
    HostReservedCapacity,
    InstanceOfferingInventory,
    VmInstanceInventory,
    VmInstanceSpec,
    VmNicInventory,
    ZoneInventory,
)
from .devices import DiskTO, NicTO
from .flows import HostConnectFlows, VmCreateFlows, VmReleaseFlows
from .network import IpRangeInventory, L2NetworkInventory, L3NetworkInventory, SecurityGroupRuleTO
from .storage import ImageInventory, PrimaryStorageInventory, VolumeInventory
from .cascade import CascadeAction

__all__ = [
    "CascadeAction",
    "ClusterInventory",
    "ConsoleAddress",
    "DiskTO",
    "HostConnectFlows",
    "HostInventory",
    "HostReservedCapacity",
    "ImageInventory",
    "InstanceOfferingInventory",
    "IpRangeInventory",
    "L2NetworkInventory",
    "L3NetworkInventory",
    "NicTO",
    "PrimaryStorageInventory",
    "SecurityGroupRuleTO",
    "VmCreateFlows",
    "VmInstanceInventory",
    "VmInstanceSpec",
    "VmNicInventory",
    "VmReleaseFlows",
    "VolumeInventory",
    "ZoneInventory",
]
