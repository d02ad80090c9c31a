"""The storage service's tables (ZStack's ``PrimaryStorageVO``, ``LocalStorageHostRefVO``,
``ImageVO``, ``ImageCacheVO``, ``VolumeVO``, ``DiskOfferingVO``, ``VolumeSnapshotVO``).

Capacity is kept so that it can be checked at any time: on every (primary storage, host) pair
``total_capacity - available_capacity`` equals the sizes of the volumes and image caches placed
there. A reservation is a conditional ``UPDATE`` made in the same transaction as the row that
holds it, and a ``CHECK`` keeps ``available_capacity`` from ever going negative.
"""

from __future__ import annotations

from typing import Any

import attrs
import peewee

from zstack_core.db import BaseModel, ModelRegistration, ResourceModel, utcnow
from zstack_core.header.storage import ImageInventory, PrimaryStorageInventory, VolumeInventory

__all__ = [
    "DiskOfferingInventory",
    "DiskOfferingVO",
    "ImageCacheVO",
    "ImageVO",
    "LocalStorageHostRefVO",
    "MODELS",
    "PrimaryStorageClusterRefVO",
    "PrimaryStorageVO",
    "VolumeSnapshotInventory",
    "VolumeSnapshotVO",
    "VolumeVO",
]


def _capacity(name: str) -> peewee.BigIntegerField:
    return peewee.BigIntegerField(default=0, constraints=[peewee.Check(f"{name} >= 0")])


class PrimaryStorageVO(ResourceModel):
    RESOURCE_TYPE = "PrimaryStorage"
    INVENTORY = PrimaryStorageInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    zone_uuid = peewee.CharField(max_length=32, index=True)
    type = peewee.CharField(max_length=64)
    url = peewee.CharField(max_length=1024)
    state = peewee.CharField(max_length=32, default="Enabled")
    status = peewee.CharField(max_length=32, default="Connected")
    total_capacity = _capacity("total_capacity")
    available_capacity = _capacity("available_capacity")
    total_physical_capacity = _capacity("total_physical_capacity")
    available_physical_capacity = _capacity("available_physical_capacity")

    class Meta:
        table_name = "primary_storage"


class PrimaryStorageClusterRefVO(BaseModel):
    """``ps`` is attached to ``cluster``: every host of the cluster can use it."""

    primary_storage_uuid = peewee.CharField(max_length=32, index=True)
    cluster_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "primary_storage_cluster_ref"
        primary_key = peewee.CompositeKey("primary_storage_uuid", "cluster_uuid")


class LocalStorageHostRefVO(BaseModel):
    """The part of a local primary storage that lives on one host (its disk)."""

    primary_storage_uuid = peewee.CharField(max_length=32, index=True)
    host_uuid = peewee.CharField(max_length=32, index=True)
    total_capacity = _capacity("total_capacity")
    available_capacity = _capacity("available_capacity")
    total_physical_capacity = _capacity("total_physical_capacity")
    available_physical_capacity = _capacity("available_physical_capacity")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "local_storage_host_ref"
        primary_key = peewee.CompositeKey("primary_storage_uuid", "host_uuid")


class ImageVO(ResourceModel):
    RESOURCE_TYPE = "Image"
    INVENTORY = ImageInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    url = peewee.CharField(max_length=2048, default="")
    format = peewee.CharField(max_length=16)
    media_type = peewee.CharField(max_length=32, default="RootVolumeTemplate")
    platform = peewee.CharField(max_length=32, default="Linux")
    status = peewee.CharField(max_length=32, index=True)
    """``Downloading``, ``Ready`` or ``Deleted``; a failed download leaves no row."""
    state = peewee.CharField(max_length=32, default="Enabled")
    size = peewee.BigIntegerField(default=0)
    actual_size = peewee.BigIntegerField(default=0)
    md5sum = peewee.CharField(max_length=32, null=True)
    sha256sum = peewee.CharField(max_length=64, null=True)
    install_path = peewee.CharField(max_length=2048, null=True)
    """The file in the image store of the management node."""

    class Meta:
        table_name = "image"


class ImageCacheVO(BaseModel):
    """A copy of an image in a primary storage on one host; root volumes use it as backing
    file. It holds ``size`` bytes of the host's capacity."""

    id = peewee.AutoField()
    primary_storage_uuid = peewee.CharField(max_length=32, index=True)
    host_uuid = peewee.CharField(max_length=32, index=True)
    image_uuid = peewee.CharField(max_length=32, index=True)
    install_path = peewee.CharField(max_length=2048, null=True)
    format = peewee.CharField(max_length=16, default="qcow2")
    size = peewee.BigIntegerField(default=0)
    """Bytes of capacity held (the image's actual size)."""
    virtual_size = peewee.BigIntegerField(default=0)
    status = peewee.CharField(max_length=32, default="Creating")
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "image_cache"
        indexes = ((("primary_storage_uuid", "host_uuid", "image_uuid"), True),)


@attrs.frozen(kw_only=True)
class DiskOfferingInventory:
    uuid: str
    name: str
    disk_size: int
    description: str = ""
    state: str = "Enabled"
    type: str = "DefaultDiskOfferingType"


class DiskOfferingVO(ResourceModel):
    RESOURCE_TYPE = "DiskOffering"
    INVENTORY = DiskOfferingInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    disk_size = peewee.BigIntegerField()
    state = peewee.CharField(max_length=32, default="Enabled")
    type = peewee.CharField(max_length=64, default="DefaultDiskOfferingType")

    class Meta:
        table_name = "disk_offering"


class VolumeVO(ResourceModel):
    """A root or data volume. ``status``: ``NotInstantiated`` (a data volume not yet placed on
    any primary storage, holding no capacity), ``Creating``, ``Ready``, ``Deleted``. An expunged
    volume has no row."""

    RESOURCE_TYPE = "Volume"
    INVENTORY = VolumeInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    type = peewee.CharField(max_length=16)
    size = peewee.BigIntegerField()
    actual_size = peewee.BigIntegerField(default=0)
    status = peewee.CharField(max_length=32, index=True)
    state = peewee.CharField(max_length=32, default="Enabled")
    format = peewee.CharField(max_length=16, default="qcow2")
    vm_instance_uuid = peewee.CharField(max_length=32, null=True, index=True)
    last_vm_instance_uuid = peewee.CharField(max_length=32, null=True)
    primary_storage_uuid = peewee.CharField(max_length=32, null=True, index=True)
    host_uuid = peewee.CharField(max_length=32, null=True, index=True)
    root_image_uuid = peewee.CharField(max_length=32, null=True)
    disk_offering_uuid = peewee.CharField(max_length=32, null=True)
    install_path = peewee.CharField(max_length=2048, null=True)
    device_id = peewee.IntegerField(null=True)

    class Meta:
        table_name = "volume"
        # One device number per VM: two attaches racing for it cannot both win.
        indexes = ((("vm_instance_uuid", "device_id"), True),)


@attrs.frozen(kw_only=True)
class VolumeSnapshotInventory:
    uuid: str
    name: str
    volume_uuid: str
    volume_type: str
    primary_storage_uuid: str | None = None
    host_uuid: str | None = None
    description: str = ""
    type: str = "Hypervisor"
    format: str = "qcow2"
    state: str = "Enabled"
    status: str = "Ready"
    size: int = 0
    primary_storage_install_path: str | None = None


class VolumeSnapshotVO(ResourceModel):
    """A qcow2 internal snapshot of a volume, named by its UUID inside the volume's file."""

    RESOURCE_TYPE = "VolumeSnapshot"
    INVENTORY = VolumeSnapshotInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    volume_uuid = peewee.CharField(max_length=32, index=True)
    volume_type = peewee.CharField(max_length=16)
    primary_storage_uuid = peewee.CharField(max_length=32, null=True)
    host_uuid = peewee.CharField(max_length=32, null=True)
    type = peewee.CharField(max_length=32, default="Hypervisor")
    format = peewee.CharField(max_length=16, default="qcow2")
    state = peewee.CharField(max_length=32, default="Enabled")
    status = peewee.CharField(max_length=32, default="Ready")
    size = peewee.BigIntegerField(default=0)
    primary_storage_install_path = peewee.CharField(max_length=2048, null=True)

    class Meta:
        table_name = "volume_snapshot"


MODELS: list[type[BaseModel]] = [
    PrimaryStorageVO, PrimaryStorageClusterRefVO, LocalStorageHostRefVO, ImageVO, ImageCacheVO,
    DiskOfferingVO, VolumeVO, VolumeSnapshotVO,
]


def registration() -> ModelRegistration:
    return ModelRegistration(name="zstack_storage", models=MODELS)


def ps_inventories(rows: list[Any]) -> list[PrimaryStorageInventory]:
    """Primary storage rows with their attached clusters, loaded in one query (database thread)."""
    uuids = [r.uuid for r in rows]
    clusters: dict[str, list[str]] = {u: [] for u in uuids}
    if uuids:
        refs = (PrimaryStorageClusterRefVO.select()
                .where(PrimaryStorageClusterRefVO.primary_storage_uuid.in_(uuids))
                .order_by(PrimaryStorageClusterRefVO.created_at))
        for ref in refs:
            clusters[ref.primary_storage_uuid].append(ref.cluster_uuid)
    return [attrs.evolve(r.to_inventory(), attached_cluster_uuids=clusters[r.uuid]) for r in rows]
