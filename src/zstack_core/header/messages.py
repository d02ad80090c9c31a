"""Messages services send each other. Each names the service that handles it.

Service ids: ``compute`` (zstack-kvm: zones, clusters, hosts, VMs), ``storage`` (zstack-storage),
``network`` (zstack-network). A message here is a promise: the named service handles it, and a
caller needs nothing but this module to use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..messages import MessageReply, NeedReplyMessage
from .devices import DiskTO, NicTO
from .compute import VmNicInventory
from .storage import VolumeInventory


# -- handled by compute ---------------------------------------------------------------------


@attrs.define(kw_only=True)
class HostRunMsg(NeedReplyMessage):
    """Run ``fn(connection)`` with the hypervisor connection of ``host_uuid`` (for KVM a
    ``libvirt.virConnect``), in that host's worker thread, and reply with its return value.

    How storage makes pools and volumes and network makes bridges and DHCP networks on a host
    without opening connections of their own (one connection per host, owned by compute).
    ``fn`` runs off the event loop and may block. In-process only: ``fn`` is not serializable.
    """

    SERVICE_ID = "compute"
    host_uuid: str
    fn: Callable[[Any], Any]


@attrs.define(kw_only=True)
class HostRunReply(MessageReply):
    result: Any = None


@attrs.define(kw_only=True)
class VmAttachDiskMsg(NeedReplyMessage):
    """Hot-plug ``disk`` into the VM if it runs (it is part of every later start anyway, through
    ``zstack_vm_domain_devices``). Calls the attach-volume extension points."""

    SERVICE_ID = "compute"
    vm_instance_uuid: str
    volume: VolumeInventory
    disk: DiskTO


@attrs.define(kw_only=True)
class VmDetachDiskMsg(NeedReplyMessage):
    """Unplug ``disk`` from the VM if it runs. Calls the detach-volume extension points."""

    SERVICE_ID = "compute"
    vm_instance_uuid: str
    volume: VolumeInventory
    disk: DiskTO


@attrs.define(kw_only=True)
class VmAttachNicMsg(NeedReplyMessage):
    """Hot-plug ``nic`` into the VM if it runs."""

    SERVICE_ID = "compute"
    vm_instance_uuid: str
    nic: VmNicInventory
    nic_to: NicTO


@attrs.define(kw_only=True)
class VmDetachNicMsg(NeedReplyMessage):
    """Unplug ``nic`` from the VM if it runs."""

    SERVICE_ID = "compute"
    vm_instance_uuid: str
    nic: VmNicInventory
    nic_to: NicTO


# -- handled by network ---------------------------------------------------------------------


@attrs.define(kw_only=True)
class AllocateVmNicMsg(NeedReplyMessage):
    """Create a NIC on ``l3_network_uuid`` for a VM, with a unique MAC and an IP (``ip`` if given,
    else one chosen by the L3's strategy)."""

    SERVICE_ID = "network"
    vm_instance_uuid: str
    l3_network_uuid: str
    ip: str | None = None
    device_id: int = 0
    account_uuid: str | None = None


@attrs.define(kw_only=True)
class AllocateVmNicReply(MessageReply):
    nic: VmNicInventory | None = None
    nic_to: NicTO | None = None


@attrs.define(kw_only=True)
class ReleaseVmNicMsg(NeedReplyMessage):
    """Delete a NIC and return its IP. Idempotent."""

    SERVICE_ID = "network"
    nic_uuid: str


__all__ = [
    "AllocateVmNicMsg",
    "AllocateVmNicReply",
    "HostRunMsg",
    "HostRunReply",
    "ReleaseVmNicMsg",
    "VmAttachDiskMsg",
    "VmAttachNicMsg",
    "VmDetachDiskMsg",
    "VmDetachNicMsg",
]
