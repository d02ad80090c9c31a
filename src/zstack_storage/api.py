"""The API messages of zstack-storage, named as ZStack names them, and their REST routes."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from zstack_core import APIEvent, APIMessage, APIReply, ApiRegistration
from zstack_core.header.storage import ImageInventory, PrimaryStorageInventory, VolumeInventory

from .models import DiskOfferingInventory, VolumeSnapshotInventory

SERVICE = "storage"


@attrs.define(kw_only=True)
class _StorageMsg(APIMessage):
    SERVICE_ID = SERVICE


# -- primary storage ------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APIAddLocalPrimaryStorageMsg(_StorageMsg):
    """Add local storage: ``url`` is a directory that each host of the clusters it is attached
    to gets as a libvirt ``dir`` pool."""

    name: str
    zone_uuid: str
    url: str
    description: str = ""


@attrs.define(kw_only=True)
class APIAttachPrimaryStorageToClusterMsg(_StorageMsg):
    primary_storage_uuid: str
    cluster_uuid: str


@attrs.define(kw_only=True)
class APIDetachPrimaryStorageFromClusterMsg(_StorageMsg):
    primary_storage_uuid: str
    cluster_uuid: str


@attrs.define(kw_only=True)
class APIReconnectPrimaryStorageMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIDeletePrimaryStorageMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIPrimaryStorageEvent(APIEvent):
    inventory: PrimaryStorageInventory | None = None


@attrs.define(kw_only=True)
class APIGetLocalStorageHostDiskCapacityMsg(_StorageMsg):
    primary_storage_uuid: str
    host_uuid: str | None = None


@attrs.define(kw_only=True)
class LocalStorageHostCapacity:
    host_uuid: str
    total_capacity: int
    available_capacity: int
    total_physical_capacity: int
    available_physical_capacity: int


@attrs.define(kw_only=True)
class APIGetLocalStorageHostDiskCapacityReply(APIReply):
    inventories: list[LocalStorageHostCapacity] = attrs.field(factory=list)


# -- images -----------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APIAddImageMsg(_StorageMsg):
    """Add an image to the node's image store from an http(s) URL, a ``file://`` URL or an
    absolute path on the management node. Long-running: answers with a job."""

    LONG_RUNNING = True
    name: str
    url: str
    format: str
    media_type: str | None = None
    md5sum: str | None = None
    sha256sum: str | None = None
    description: str = ""
    platform: str = "Linux"


@attrs.define(kw_only=True)
class APIDeleteImageMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIExpungeImageMsg(_StorageMsg):
    image_uuid: str


@attrs.define(kw_only=True)
class APIRecoverImageMsg(_StorageMsg):
    image_uuid: str


@attrs.define(kw_only=True)
class APIImageEvent(APIEvent):
    inventory: ImageInventory | None = None


# -- disk offerings and volumes ---------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateDiskOfferingMsg(_StorageMsg):
    name: str
    disk_size: int
    description: str = ""


@attrs.define(kw_only=True)
class APIDeleteDiskOfferingMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIDiskOfferingEvent(APIEvent):
    inventory: DiskOfferingInventory | None = None


@attrs.define(kw_only=True)
class APICreateDataVolumeMsg(_StorageMsg):
    """A data volume of ``diskSize`` bytes or of a disk offering's size. It is placed on primary
    storage (and holds capacity) when first attached to a VM, as in ZStack."""

    name: str
    disk_offering_uuid: str | None = None
    disk_size: int | None = None
    description: str = ""


@attrs.define(kw_only=True)
class APIAttachDataVolumeToVmMsg(_StorageMsg):
    volume_uuid: str
    vm_instance_uuid: str


@attrs.define(kw_only=True)
class APIDetachDataVolumeFromVmMsg(_StorageMsg):
    uuid: str
    vm_uuid: str | None = None


@attrs.define(kw_only=True)
class APIResizeDataVolumeMsg(_StorageMsg):
    uuid: str
    size: int


@attrs.define(kw_only=True)
class APIResizeRootVolumeMsg(_StorageMsg):
    uuid: str
    size: int


@attrs.define(kw_only=True)
class APIDeleteDataVolumeMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIRecoverDataVolumeMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIExpungeDataVolumeMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIVolumeEvent(APIEvent):
    inventory: VolumeInventory | None = None


# -- volume snapshots -------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateVolumeSnapshotMsg(_StorageMsg):
    volume_uuid: str
    name: str
    description: str = ""


@attrs.define(kw_only=True)
class APIRevertVolumeFromSnapshotMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIDeleteVolumeSnapshotMsg(_StorageMsg):
    uuid: str


@attrs.define(kw_only=True)
class APIVolumeSnapshotEvent(APIEvent):
    inventory: VolumeSnapshotInventory | None = None


def registrations() -> Sequence[ApiRegistration]:
    ps, image, vol, snap = "PrimaryStorage", "Image", "Volume", "VolumeSnapshot"
    return [
        # Primary storage is infrastructure: admin only, as in ZStack.
        ApiRegistration(message=APIAddLocalPrimaryStorageMsg, resource=ps, route=("POST", "/v1/primary-storage/local-storage"),
                        admin_only=True),
        ApiRegistration(message=APIAttachPrimaryStorageToClusterMsg, resource=ps,
                        route=("POST", "/v1/clusters/{clusterUuid}/primary-storage/{primaryStorageUuid}"), admin_only=True),
        ApiRegistration(message=APIDetachPrimaryStorageFromClusterMsg, resource=ps,
                        route=("DELETE", "/v1/clusters/{clusterUuid}/primary-storage/{primaryStorageUuid}"), admin_only=True),
        ApiRegistration(message=APIReconnectPrimaryStorageMsg, resource=ps, route=("PUT", "/v1/primary-storage/{uuid}/actions"),
                        admin_only=True),
        ApiRegistration(message=APIDeletePrimaryStorageMsg, resource=ps, route=("DELETE", "/v1/primary-storage/{uuid}"),
                        admin_only=True),
        ApiRegistration(message=APIGetLocalStorageHostDiskCapacityMsg, resource=ps,
                        route=("GET", "/v1/primary-storage/local-storage/{primaryStorageUuid}/capacities")),
        ApiRegistration(message=APIAddImageMsg, resource=image, route=("POST", "/v1/images")),
        ApiRegistration(message=APIDeleteImageMsg, resource=image, route=("DELETE", "/v1/images/{uuid}")),
        ApiRegistration(message=APIExpungeImageMsg, resource=image, route=("PUT", "/v1/images/{imageUuid}/actions")),
        ApiRegistration(message=APIRecoverImageMsg, resource=image, route=("PUT", "/v1/images/{imageUuid}/actions")),
        ApiRegistration(message=APICreateDiskOfferingMsg, resource="DiskOffering", route=("POST", "/v1/disk-offerings")),
        ApiRegistration(message=APIDeleteDiskOfferingMsg, resource="DiskOffering", route=("DELETE", "/v1/disk-offerings/{uuid}")),
        ApiRegistration(message=APICreateDataVolumeMsg, resource=vol, route=("POST", "/v1/volumes/data")),
        ApiRegistration(message=APIAttachDataVolumeToVmMsg, resource=vol,
                        route=("POST", "/v1/volumes/{volumeUuid}/vm-instances/{vmInstanceUuid}")),
        ApiRegistration(message=APIDetachDataVolumeFromVmMsg, resource=vol, route=("DELETE", "/v1/volumes/{uuid}/vm-instances")),
        ApiRegistration(message=APIResizeDataVolumeMsg, resource=vol, route=("PUT", "/v1/volumes/data/resize/{uuid}/actions")),
        ApiRegistration(message=APIResizeRootVolumeMsg, resource=vol, route=("PUT", "/v1/volumes/resize/{uuid}/actions")),
        ApiRegistration(message=APIDeleteDataVolumeMsg, resource=vol, route=("DELETE", "/v1/volumes/{uuid}")),
        ApiRegistration(message=APIRecoverDataVolumeMsg, resource=vol, route=("PUT", "/v1/volumes/{uuid}/actions")),
        ApiRegistration(message=APIExpungeDataVolumeMsg, resource=vol, route=("PUT", "/v1/volumes/{uuid}/actions")),
        ApiRegistration(message=APICreateVolumeSnapshotMsg, resource=snap,
                        route=("POST", "/v1/volumes/{volumeUuid}/volume-snapshots")),
        ApiRegistration(message=APIRevertVolumeFromSnapshotMsg, resource=snap, route=("PUT", "/v1/volume-snapshots/{uuid}/actions")),
        ApiRegistration(message=APIDeleteVolumeSnapshotMsg, resource=snap, route=("DELETE", "/v1/volume-snapshots/{uuid}")),
    ]
