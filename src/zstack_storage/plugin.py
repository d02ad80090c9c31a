"""Hook implementations of zstack-storage: the ``storage`` service and what it registers.

Extension points whose arguments carry no node (a VM spec, a host, a cascade) reach the running
storage service through :func:`_service_for`: the node whose hook is running (the kernel's
``current_node()``) where the kernel offers it, else the one running in this process, or, when a
process runs several nodes, the one whose database knows the resource.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from zstack_core import ErrorCodeSpace, FlowContribution, GlobalProperty, ManagementNode, Service, SysErrors, hookimpl
from zstack_core.api import ApiRegistration
from zstack_core.check import ConsistencyCheck
from zstack_core.db import ModelRegistration
from zstack_core.globalconfig import Choices, GlobalConfig
from zstack_core.header.backends import HostAllocatorFilter, PrimaryStorageFactory
from zstack_core.header.cascade import CascadeAction
from zstack_core.header.compute import HostInventory, VmInstanceSpec
from zstack_core.header.flows import VmCreateFlows
from zstack_core.header.storage import ImageInventory, VolumeInventory
from zstack_core.query import QueryableResource

from . import api, models

try:
    from zstack_core.plugins import current_node
except ImportError:  # a kernel that does not say which node a hook runs for
    def current_node() -> Any:  # type: ignore[misc]
        return None
from .base import RESERVED_CAPACITY
from .consistency import CHECKS as CONSISTENCY_CHECKS
from .errors import ImageErrors, PrimaryStorageErrors, VolumeErrors
from .flows import AllocatePrimaryStorageFlow, AllocateVolumeFlow, PrimaryStorageAllocatorFilter, VmVolumes
from .image import IMAGE_DELETION_POLICY, IMAGE_STORE_PATH, AddImageInterceptor, ImageHandlers
from .local_storage import LocalStorageFactory
from .snapshot import SnapshotHandlers
from .volume import DELETION_POLICY, VolumeHandlers

__all__ = ["ImageErrors", "PrimaryStorageErrors", "StorageService", "VolumeErrors"]


class StorageService(VolumeHandlers, ImageHandlers, SnapshotHandlers):
    """Primary storage, images, volumes and snapshots (service id ``storage``)."""

    def __init__(self) -> None:
        super().__init__()
        self.downloads = {}
        self.vm_hooks = VmVolumes(self)

    async def start(self) -> None:
        for _, f in self.node.extensions.get("host_allocator_filters", []):
            if isinstance(f, PrimaryStorageAllocatorFilter):
                f.service = self
        await self.sweep_interrupted_downloads()
        _running.append(self)

    async def stop(self) -> None:
        self.cancel_downloads()
        if self in _running:
            _running.remove(self)


_running: list[StorageService] = []


async def _service_for(resource_uuid: str | None) -> StorageService:
    node = current_node()
    service = node.services.get("storage") if node is not None else None
    if isinstance(service, StorageService):
        return service
    if not _running:
        raise SysErrors.exc("1014", "the storage service is not running")
    if len(_running) == 1 or resource_uuid is None:
        return _running[-1]
    for service in _running:
        if await service.node.resource_type_of(resource_uuid) is not None:
            return service
    return _running[-1]


# -- registration hooks -------------------------------------------------------------------------


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [PrimaryStorageErrors, VolumeErrors, ImageErrors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [StorageService()]


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    return [attrs.evolve(r, interceptors=[AddImageInterceptor()]) if r.message is api.APIAddImageMsg else r
            for r in api.registrations()]


@hookimpl
def zstack_models() -> Sequence[ModelRegistration]:
    return [models.registration()]


@hookimpl
def zstack_queryable_resources() -> Sequence[QueryableResource]:
    return [
        QueryableResource(name="PrimaryStorage", model=models.PrimaryStorageVO,
                          inventory=models.PrimaryStorageInventory, to_inventories=models.ps_inventories),
        QueryableResource(name="Image", model=models.ImageVO, inventory=ImageInventory),
        QueryableResource(name="Volume", model=models.VolumeVO, inventory=VolumeInventory),
        QueryableResource(name="DiskOffering", model=models.DiskOfferingVO, inventory=models.DiskOfferingInventory),
        QueryableResource(name="VolumeSnapshot", model=models.VolumeSnapshotVO,
                          inventory=models.VolumeSnapshotInventory),
    ]


@hookimpl
def zstack_global_properties() -> Sequence[GlobalProperty]:
    section, name = IMAGE_STORE_PATH.split(".")
    return [GlobalProperty(section=section, name=name, default="",
                           description="Directory of the image store (default: <data_dir>/images).")]


@hookimpl
def zstack_global_configs() -> Sequence[GlobalConfig]:
    policy = Choices(("Delay", "Direct"))
    return [
        GlobalConfig(category=RESERVED_CAPACITY[0], name=RESERVED_CAPACITY[1], type="size", default="1G",
                     description="Space every host of a primary storage keeps free: allocations never go below it.",
                     resource_types=("PrimaryStorage",)),
        GlobalConfig(category=DELETION_POLICY[0], name=DELETION_POLICY[1], default="Delay", validators=[policy],
                     description="Delay: a deleted data volume can be recovered until expunged. Direct: delete expunges."),
        GlobalConfig(category=IMAGE_DELETION_POLICY[0], name=IMAGE_DELETION_POLICY[1], default="Delay",
                     validators=[policy],
                     description="Delay: a deleted image can be recovered until expunged. Direct: delete expunges."),
    ]


@hookimpl
def zstack_primary_storage_factories() -> Sequence[PrimaryStorageFactory]:
    return [LocalStorageFactory()]


@hookimpl
def zstack_host_allocator_filters() -> Sequence[HostAllocatorFilter]:
    return [PrimaryStorageAllocatorFilter()]  # one per node: bound to its service at start


@hookimpl
def zstack_consistency_checks() -> Sequence[ConsistencyCheck]:
    """Pool volumes, capacity and leftovers against storage's tables (see consistency.py)."""
    return list(CONSISTENCY_CHECKS)


@hookimpl
def zstack_flows() -> Sequence[FlowContribution]:
    return [
        FlowContribution(chain=VmCreateFlows.CHAIN, flow=AllocatePrimaryStorageFlow(),
                         order=VmCreateFlows.ALLOCATE_PRIMARY_STORAGE),
        FlowContribution(chain=VmCreateFlows.CHAIN, flow=AllocateVolumeFlow(), order=VmCreateFlows.ALLOCATE_VOLUME),
    ]


# -- extension points -----------------------------------------------------------------------------


@hookimpl
def zstack_node_stop(node: ManagementNode) -> None:
    service = node.services.get("storage")
    if isinstance(service, StorageService):
        service.cancel_downloads()  # before the node waits for API jobs: downloads end now


@hookimpl
async def zstack_vm_create_check(spec: VmInstanceSpec) -> None:
    await (await _service_for(spec.vm.uuid)).vm_hooks.check(spec)


@hookimpl
async def zstack_vm_domain_devices(spec: VmInstanceSpec) -> None:
    await (await _service_for(spec.vm.uuid)).vm_hooks.disks(spec)


@hookimpl
async def zstack_vm_release_resource(spec: VmInstanceSpec, reason: str) -> None:
    await (await _service_for(spec.vm.uuid)).vm_hooks.release(spec, reason)


@hookimpl
async def zstack_host_connected(host: HostInventory, first_time: bool) -> None:
    await (await _service_for(host.uuid)).on_host_connected(host)


@hookimpl
async def zstack_cascade(action: CascadeAction) -> None:
    service = await _service_for(action.parent_uuids[0] if action.parent_uuids else None)
    await service.cascade(action.parent_type, list(action.parent_uuids), action.mode)
