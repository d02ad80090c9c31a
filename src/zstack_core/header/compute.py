"""Compute contracts: zones, clusters, hosts, VM instances and NICs as others see them."""

from __future__ import annotations

from typing import Any

import attrs

from .devices import DiskTO, NicTO
from .storage import ImageInventory, VolumeInventory


@attrs.frozen(kw_only=True)
class ZoneInventory:
    uuid: str
    name: str
    description: str = ""
    state: str = "Enabled"


@attrs.frozen(kw_only=True)
class ClusterInventory:
    uuid: str
    name: str
    zone_uuid: str
    hypervisor_type: str = "KVM"
    description: str = ""
    state: str = "Enabled"


@attrs.frozen(kw_only=True)
class HostInventory:
    """A hypervisor host. ``state`` is the admin state (Enabled, Disabled, PreMaintenance,
    Maintenance); ``status`` the connection (Connecting, Connected, Disconnected)."""

    uuid: str
    name: str
    zone_uuid: str
    cluster_uuid: str
    hypervisor_type: str = "KVM"
    management_url: str = ""
    state: str = "Enabled"
    status: str = "Connecting"
    total_cpu: int = 0
    available_cpu: int = 0
    total_memory: int = 0
    available_memory: int = 0
    description: str = ""
    cpu_num: int = 0
    """Physical CPU threads; ``total_cpu`` is this times the CPU over-provisioning ratio."""
    architecture: str = ""


@attrs.frozen(kw_only=True)
class InstanceOfferingInventory:
    """A VM size: CPUs and memory (bytes), as ZStack's instance offering."""

    uuid: str
    name: str
    cpu_num: int
    memory_size: int
    description: str = ""
    state: str = "Enabled"
    allocator_strategy: str | None = None


@attrs.frozen(kw_only=True)
class HostReservedCapacity:
    """Capacity held back on a host for its own software (the seed's ``reservedMemory``)."""

    reserved_memory: int = 0
    reserved_cpu: int = 0


@attrs.frozen(kw_only=True)
class VmNicInventory:
    uuid: str
    vm_instance_uuid: str
    l3_network_uuid: str
    mac: str
    ip: str | None = None
    netmask: str | None = None
    gateway: str | None = None
    device_id: int = 0
    internal_name: str = ""


@attrs.frozen(kw_only=True)
class VmInstanceInventory:
    uuid: str
    name: str
    state: str
    zone_uuid: str | None = None
    cluster_uuid: str | None = None
    host_uuid: str | None = None
    last_host_uuid: str | None = None
    image_uuid: str | None = None
    instance_offering_uuid: str | None = None
    root_volume_uuid: str | None = None
    hypervisor_type: str = "KVM"
    cpu_num: int = 1
    memory_size: int = 0
    description: str = ""
    vm_nics: list[VmNicInventory] = attrs.field(factory=list)
    all_volumes: list[VolumeInventory] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class VmInstanceSpec:
    """What VM-creation flows pass along (ZStack's ``VmInstanceSpec``).

    Compute fills in the VM and its destination host; storage adds the root and data volumes and
    their :class:`DiskTO`; network adds NICs and their :class:`NicTO`. Each flow reads what earlier
    flows wrote and its rollback undoes its own part.
    """

    vm: VmInstanceInventory
    account_uuid: str | None = None
    image_uuid: str | None = None
    l3_network_uuids: list[str] = attrs.field(factory=list)
    root_disk_size: int | None = None
    data_disk_offering_uuids: list[str] = attrs.field(factory=list)
    data_disk_sizes: list[int] = attrs.field(factory=list)
    system_tags: list[str] = attrs.field(factory=list)
    destination_host: HostInventory | None = None
    root_volume: VolumeInventory | None = None
    data_volumes: list[VolumeInventory] = attrs.field(factory=list)
    nics: list[VmNicInventory] = attrs.field(factory=list)
    disks: list[DiskTO] = attrs.field(factory=list)
    nic_tos: list[NicTO] = attrs.field(factory=list)
    extra: dict[str, Any] = attrs.field(factory=dict)
    """Room for a plugin's own per-create state, keyed by the plugin's name."""
    image: ImageInventory | None = None
    """The image of ``image_uuid`` once a flow or hook has read it (storage does, in the create
    check), so later flows and hooks of the same create use it instead of reading it again."""


@attrs.frozen(kw_only=True)
class ConsoleAddress:
    """Where a VM's console listens (the seed's ``ConsoleHypervisorBackend``)."""

    protocol: str
    hostname: str
    port: int
