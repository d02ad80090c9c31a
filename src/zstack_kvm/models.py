"""Compute's tables: zones, clusters, KVM hosts, instance offerings and VM instances.

Capacity lives on the host row. The invariant every write keeps, in one transaction:
``available = total - reserved - (sum over VMs whose host_uuid is this host)``, for CPU and
memory. A VM holds capacity exactly while its ``host_uuid`` is set (Starting, Running, Paused,
Unknown...); stopping, destroying or failing to create it clears ``host_uuid`` and gives the
capacity back in the same transaction, so nothing is counted twice or leaked.
"""

from __future__ import annotations

from typing import Any

import peewee

from zstack_core.db import BaseModel, ResourceModel, utcnow
from zstack_core.header import (
    ClusterInventory,
    HostInventory,
    InstanceOfferingInventory,
    VmInstanceInventory,
    ZoneInventory,
)

__all__ = ["ClusterVO", "HostVO", "InstanceOfferingVO", "LeftDomainVO", "MODELS", "VmCreatingVO", "VmInstanceVO",
           "ZoneVO", "remember_left_domain_sync"]


class ZoneVO(ResourceModel):
    RESOURCE_TYPE = "Zone"
    INVENTORY = ZoneInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    state = peewee.CharField(max_length=32, default="Enabled")

    class Meta:
        table_name = "zone"


class ClusterVO(ResourceModel):
    RESOURCE_TYPE = "Cluster"
    INVENTORY = ClusterInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    zone_uuid = peewee.CharField(max_length=32, index=True)
    hypervisor_type = peewee.CharField(max_length=32, default="KVM")
    state = peewee.CharField(max_length=32, default="Enabled")

    class Meta:
        table_name = "cluster"

    def config_parents(self) -> list[str]:
        return [self.zone_uuid]


class HostVO(ResourceModel):
    RESOURCE_TYPE = "Host"
    INVENTORY = HostInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    zone_uuid = peewee.CharField(max_length=32, index=True)
    cluster_uuid = peewee.CharField(max_length=32, index=True)
    hypervisor_type = peewee.CharField(max_length=32, default="KVM")
    management_url = peewee.CharField(max_length=1024, unique=True)
    state = peewee.CharField(max_length=32, default="Enabled")
    status = peewee.CharField(max_length=32, default="Connecting")
    cpu_num = peewee.IntegerField(default=0)
    architecture = peewee.CharField(max_length=32, default="")
    total_cpu = peewee.IntegerField(default=0)
    available_cpu = peewee.IntegerField(default=0)
    reserved_cpu = peewee.IntegerField(default=0)
    total_memory = peewee.BigIntegerField(default=0)
    available_memory = peewee.BigIntegerField(default=0)
    reserved_memory = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "host"

    def config_parents(self) -> list[str]:
        return [self.cluster_uuid, self.zone_uuid]


class InstanceOfferingVO(ResourceModel):
    RESOURCE_TYPE = "InstanceOffering"
    INVENTORY = InstanceOfferingInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    cpu_num = peewee.IntegerField()
    memory_size = peewee.BigIntegerField()
    state = peewee.CharField(max_length=32, default="Enabled")
    allocator_strategy = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = "instance_offering"


class VmInstanceVO(ResourceModel):
    RESOURCE_TYPE = "VmInstance"
    INVENTORY = VmInstanceInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    state = peewee.CharField(max_length=32, index=True)
    zone_uuid = peewee.CharField(max_length=32, null=True, index=True)
    cluster_uuid = peewee.CharField(max_length=32, null=True, index=True)
    host_uuid = peewee.CharField(max_length=32, null=True, index=True)
    last_host_uuid = peewee.CharField(max_length=32, null=True, index=True)
    image_uuid = peewee.CharField(max_length=32, null=True)
    instance_offering_uuid = peewee.CharField(max_length=32, null=True)
    root_volume_uuid = peewee.CharField(max_length=32, null=True)
    hypervisor_type = peewee.CharField(max_length=32, default="KVM")
    cpu_num = peewee.IntegerField()
    memory_size = peewee.BigIntegerField()

    class Meta:
        table_name = "vm_instance"

    def config_parents(self) -> list[str]:
        return [u for u in (self.host_uuid, self.cluster_uuid, self.zone_uuid) if u]


class VmCreatingVO(BaseModel):
    """A VM whose create has not ended (written with the VM row, removed when the create
    succeeds or is rolled back). What a node killed mid-create leaves here is rolled back when it
    starts again: a VM is either created and recorded, or gone with everything it held."""

    vm_uuid = peewee.CharField(primary_key=True, max_length=32)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "vm_creating"


class LeftDomainVO(BaseModel):
    """A domain an operation had to remove and could not, because its host was unreachable
    (libvirtd gone): a create or start rolled back, a forced stop or destroy. QEMU may still run
    there. The VM sync removes the domain once the host lists it again, unless the VM has been
    placed on that host meanwhile, and the row with it. Deleting the host deletes its rows."""

    vm_uuid = peewee.CharField(max_length=32)
    host_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "vm_left_domain"
        indexes = ((("vm_uuid", "host_uuid"), True),)


def remember_left_domain_sync(vm_uuid: str, host_uuid: str) -> None:
    """Write the :class:`LeftDomainVO` row of VM ``vm_uuid``'s domain on ``host_uuid`` (once)."""
    LeftDomainVO.insert(vm_uuid=vm_uuid, host_uuid=host_uuid).on_conflict_ignore().execute()


MODELS: list[type[Any]] = [ZoneVO, ClusterVO, HostVO, InstanceOfferingVO, VmInstanceVO, VmCreatingVO, LeftDomainVO]
