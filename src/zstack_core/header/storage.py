"""Storage contracts: primary storage, images and volumes as others see them."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class PrimaryStorageInventory:
    uuid: str
    name: str
    zone_uuid: str
    type: str
    url: str
    state: str = "Enabled"
    status: str = "Connected"
    total_capacity: int = 0
    available_capacity: int = 0
    attached_cluster_uuids: list[str] = attrs.field(factory=list)
    description: str = ""
    total_physical_capacity: int = 0
    available_physical_capacity: int = 0


@attrs.frozen(kw_only=True)
class ImageInventory:
    uuid: str
    name: str
    format: str
    status: str
    url: str = ""
    size: int = 0
    actual_size: int = 0
    md5sum: str | None = None
    sha256sum: str | None = None
    media_type: str = "RootVolumeTemplate"
    """``RootVolumeTemplate``, ``DataVolumeTemplate`` or ``ISO``."""
    description: str = ""
    state: str = "Enabled"
    platform: str = "Linux"


@attrs.frozen(kw_only=True)
class VolumeInventory:
    uuid: str
    name: str
    type: str
    """``Root`` or ``Data``."""
    size: int
    status: str = "Ready"
    state: str = "Enabled"
    format: str = "qcow2"
    vm_instance_uuid: str | None = None
    primary_storage_uuid: str | None = None
    root_image_uuid: str | None = None
    install_path: str | None = None
    device_id: int | None = None
    actual_size: int = 0
    description: str = ""
    host_uuid: str | None = None
    """For local storage: the host whose disk holds the volume."""
    disk_offering_uuid: str | None = None
    last_vm_instance_uuid: str | None = None


@attrs.frozen(kw_only=True)
class StorageCapacity:
    """Bytes a primary storage offers on one host, as the host reports them."""

    total: int
    available: int


@attrs.frozen(kw_only=True)
class VolumeFacts:
    """What a primary storage made on a host: where it is and how big it is."""

    install_path: str
    size: int
    """Virtual size in bytes."""
    actual_size: int = 0
    format: str = "qcow2"
