"""Disk offerings and data volumes: create, attach, detach, resize, delete, recover, expunge.

A data volume is created ``NotInstantiated``: a record holding no capacity, placed on the
primary storage of the VM's host when first attached (as ZStack does), since with local storage
only the attach decides which host's disk it must live on. Attach and detach go to compute as
``VmAttachDiskMsg``/``VmDetachDiskMsg``, which hot-plug the disk when the VM runs.

Work on a volume is serialized (``storage-volume-<uuid>``); attaches and detaches of one VM
are serialized too (``storage-vm-disks-<uuid>``), always taken before the volume's.
"""

from __future__ import annotations

import logging

from zstack_core import handles, invalid_argument
from zstack_core.db import new_uuid
from zstack_core.errors import ZStackError
from zstack_core.header.compute import VmInstanceInventory
from zstack_core.header.messages import VmAttachDiskMsg, VmDetachDiskMsg
from zstack_core.header.storage import VolumeInventory
from zstack_core.ownership import disown_sync, own_sync

from . import capacity
from .allocation import NewVolume, VolumeAllocation
from .api import (
    APIAttachDataVolumeToVmMsg,
    APICreateDataVolumeMsg,
    APICreateDiskOfferingMsg,
    APIDeleteDataVolumeMsg,
    APIDeleteDiskOfferingMsg,
    APIDetachDataVolumeFromVmMsg,
    APIDiskOfferingEvent,
    APIExpungeDataVolumeMsg,
    APIRecoverDataVolumeMsg,
    APIResizeDataVolumeMsg,
    APIResizeRootVolumeMsg,
    APIVolumeEvent,
)
from .base import not_found
from .errors import PrimaryStorageErrors, VolumeErrors
from .models import DiskOfferingVO, VolumeVO
from zstack_core.prepared import Prepared

log = logging.getLogger("zstack.storage.volume")

DELETION_POLICY = ("volume", "deletionPolicy")
"""Global config: ``Delay`` (a deleted volume can be recovered until expunged) or ``Direct``."""
ATTACHABLE_VM_STATES = ("Running", "Stopped", "Paused")

_VM_VOLUMES = Prepared(lambda p: VolumeVO.select().where(VolumeVO.vm_instance_uuid == p.vm))
"""A VM's volumes, compiled once (every VM create and start reads them for the domain's disks)."""


class VolumeHandlers(VolumeAllocation):

    def max_data_volumes(self, hypervisor_type: str) -> int:
        for f in self.node.extension("hypervisor_factories"):
            if f.hypervisor_type == hypervisor_type:
                return int(f.max_data_volume_number)
        return 24  # ZStack's default when no factory says otherwise

    async def vm_volumes(self, vm_uuid: str) -> list[VolumeInventory]:
        rows = await self.node.db.run(lambda: _VM_VOLUMES.rows(VolumeVO, vm=vm_uuid))
        return sorted((r.to_inventory() for r in rows), key=lambda v: (v.type != "Root", v.device_id or 0))

    # -- disk offerings ------------------------------------------------------------------------

    @handles(APICreateDiskOfferingMsg)
    async def create_disk_offering(self, msg: APICreateDiskOfferingMsg) -> APIDiskOfferingEvent:
        if not msg.name.strip():
            raise invalid_argument("name cannot be empty", "name")
        if msg.disk_size <= 0:
            raise invalid_argument(f"diskSize must be positive, got {msg.disk_size}", "diskSize")
        uuid = new_uuid()

        def create() -> DiskOfferingVO:
            row = DiskOfferingVO.create(uuid=uuid, name=msg.name, description=msg.description, disk_size=msg.disk_size)
            own_sync(uuid, "DiskOffering", msg.account_uuid)
            self.node.tags.create_sync(uuid, "DiskOffering", msg.system_tags)
            return row

        row = await self.node.db.atomic(create)
        return APIDiskOfferingEvent(inventory=row.to_inventory())

    @handles(APIDeleteDiskOfferingMsg)
    async def delete_disk_offering(self, msg: APIDeleteDiskOfferingMsg) -> APIDiskOfferingEvent:
        def delete() -> None:
            if DiskOfferingVO.delete().where(DiskOfferingVO.uuid == msg.uuid).execute() != 1:
                raise not_found("disk offering", msg.uuid, "uuid")
            self.node.tags.delete_sync(msg.uuid)
            disown_sync(msg.uuid)

        await self.node.db.atomic(delete)
        return APIDiskOfferingEvent()

    async def disk_offering_size(self, uuid: str, field: str) -> int:
        row = await self.node.db.run(lambda: DiskOfferingVO.get_or_none(DiskOfferingVO.uuid == uuid))
        if row is None:
            raise not_found("disk offering", uuid, field)
        if row.state != "Enabled":
            raise VolumeErrors.exc("1000", f"disk offering {uuid} is {row.state}")
        return int(row.disk_size)

    # -- create --------------------------------------------------------------------------------

    @handles(APICreateDataVolumeMsg)
    async def create_data_volume(self, msg: APICreateDataVolumeMsg) -> APIVolumeEvent:
        if not msg.name.strip():
            raise invalid_argument("name cannot be empty", "name")
        if (msg.disk_offering_uuid is None) == (msg.disk_size is None):
            raise invalid_argument("give exactly one of diskOfferingUuid and diskSize", "diskSize")
        if msg.disk_offering_uuid is not None:
            size = await self.disk_offering_size(msg.disk_offering_uuid, "diskOfferingUuid")
        else:
            size = int(msg.disk_size or 0)
            if size <= 0:
                raise invalid_argument(f"diskSize must be positive, got {size}", "diskSize")
        uuid = new_uuid()

        def create() -> VolumeVO:
            row = VolumeVO.create(uuid=uuid, name=msg.name, description=msg.description, type="Data", size=size,
                                  status="NotInstantiated", disk_offering_uuid=msg.disk_offering_uuid)
            own_sync(uuid, "Volume", msg.account_uuid)
            self.node.tags.create_sync(uuid, "Volume", msg.system_tags)
            return row

        row = await self.node.db.atomic(create)
        return APIVolumeEvent(inventory=row.to_inventory())

    # -- attach / detach -----------------------------------------------------------------------

    @handles(APIAttachDataVolumeToVmMsg)
    async def attach(self, msg: APIAttachDataVolumeToVmMsg) -> APIVolumeEvent:
        await self.volume(msg.volume_uuid, "volumeUuid")
        vm = await self.vm(msg.vm_instance_uuid)
        return await self.serial(f"vm-disks-{vm.uuid}", lambda: self.serial(
            f"volume-{msg.volume_uuid}", lambda: self._attach(msg.volume_uuid, vm.uuid)))

    async def _attach(self, volume_uuid: str, vm_uuid: str) -> APIVolumeEvent:
        vol = await self.volume(volume_uuid, "volumeUuid")
        vm = await self.vm(vm_uuid)  # again: its state may have changed while we queued
        if vol.type != "Data":
            raise VolumeErrors.exc("1000", f"volume {vol.uuid} is a {vol.type} volume; only data volumes attach")
        if vol.vm_instance_uuid is not None:
            raise VolumeErrors.exc("1005", f"volume {vol.uuid} is already attached to VM {vol.vm_instance_uuid}")
        if vol.status not in ("Ready", "NotInstantiated") or vol.state != "Enabled":
            raise VolumeErrors.exc("1001", f"volume {vol.uuid} is {vol.status}/{vol.state}")
        if vm.state not in ATTACHABLE_VM_STATES:
            raise VolumeErrors.exc("1002", f"VM {vm.uuid} is {vm.state}; volumes attach to Running, Stopped or Paused VMs")
        attached = await self.vm_volumes(vm.uuid)
        limit = self.max_data_volumes(vm.hypervisor_type)
        if sum(1 for v in attached if v.type == "Data") >= limit:
            raise VolumeErrors.exc("1003", f"VM {vm.uuid} already has the {limit} data volumes {vm.hypervisor_type} allows")
        root = next((v for v in attached if v.type == "Root"), None)
        host_uuid = root.host_uuid if root is not None and root.host_uuid else (vm.host_uuid or vm.last_host_uuid)
        placed_here = False
        if vol.status == "Ready":
            if host_uuid and vol.host_uuid != host_uuid:
                raise VolumeErrors.exc("1000", f"volume {vol.uuid} is on the local storage of host {vol.host_uuid} and "
                                               f"VM {vm.uuid} on host {host_uuid}; local volumes attach only there")
        else:
            if not host_uuid:
                raise VolumeErrors.exc("1002", f"VM {vm.uuid} has no host yet, so the volume has nowhere to be placed")
            host = await self.host(host_uuid)
            only = root.primary_storage_uuid if root is not None else None
            ps_uuid = await self.allocate(host, [NewVolume(uuid=vol.uuid, name=vol.name, type="Data", size=vol.size,
                                                           existing=True)], only_ps=only)
            try:
                await self.instantiate(ps_uuid, host, [vol.uuid])
            except BaseException:
                await self.node.db.atomic(self.drop_volume_sync, vol.uuid, True)
                raise
            placed_here = True
        try:
            vol = await self._plug(vol.uuid, vm)
        except BaseException:
            if placed_here:
                await self.release([vol.uuid], back_to_not_instantiated=True)
            raise
        return APIVolumeEvent(inventory=vol)

    async def _plug(self, volume_uuid: str, vm: VmInstanceInventory) -> VolumeInventory:
        """Record the attachment with the VM's next free device number, then hot-plug."""

        def record() -> VolumeInventory:
            used = {r.device_id for r in VolumeVO.select(VolumeVO.device_id).where(VolumeVO.vm_instance_uuid == vm.uuid)}
            device_id = next(i for i in range(1, len(used) + 2) if i not in used)
            n = VolumeVO.update(vm_instance_uuid=vm.uuid, device_id=device_id).where(
                (VolumeVO.uuid == volume_uuid) & VolumeVO.vm_instance_uuid.is_null()).execute()
            if n != 1:
                raise VolumeErrors.exc("1005", f"volume {volume_uuid} was attached meanwhile")
            return VolumeVO.get(VolumeVO.uuid == volume_uuid).to_inventory()  # type: ignore[no-any-return]

        vol = await self.node.db.atomic(record)
        ps = await self.ps(vol.primary_storage_uuid or "")
        try:
            await self.node.bus.call_ok(VmAttachDiskMsg(vm_instance_uuid=vm.uuid, volume=vol,
                                                        disk=self.factory(ps.type).disk_to(vol)))
        except BaseException:
            await self.node.db.atomic(lambda: VolumeVO.update(vm_instance_uuid=None, device_id=None).where(
                VolumeVO.uuid == volume_uuid).execute())
            raise
        return vol

    @handles(APIDetachDataVolumeFromVmMsg)
    async def detach(self, msg: APIDetachDataVolumeFromVmMsg) -> APIVolumeEvent:
        vol = await self.volume(msg.uuid)
        if vol.vm_instance_uuid is None:
            raise VolumeErrors.exc("1001", f"volume {vol.uuid} is not attached to any VM")
        vm_uuid = vol.vm_instance_uuid
        return await self.serial(f"vm-disks-{vm_uuid}", lambda: self.serial(
            f"volume-{vol.uuid}", lambda: self._detach(vol.uuid, msg.vm_uuid)))

    async def _detach(self, volume_uuid: str, expected_vm: str | None) -> APIVolumeEvent:
        vol = await self.volume(volume_uuid)
        if vol.type != "Data":
            raise VolumeErrors.exc("1000", f"volume {vol.uuid} is the root volume of VM {vol.vm_instance_uuid}; "
                                           "it cannot be detached")
        if vol.vm_instance_uuid is None:
            raise VolumeErrors.exc("1001", f"volume {vol.uuid} is not attached to any VM")
        if expected_vm and expected_vm != vol.vm_instance_uuid:
            raise VolumeErrors.exc("1000", f"volume {vol.uuid} is attached to VM {vol.vm_instance_uuid}, not {expected_vm}")
        try:
            vm: VmInstanceInventory | None = await self.vm(vol.vm_instance_uuid)
        except ZStackError as exc:
            if exc.code != "SYS.1004":
                raise
            vm = None  # the VM is gone: there is nothing to unplug from
        if vm is not None and vm.state not in (*ATTACHABLE_VM_STATES, "Destroyed"):
            raise VolumeErrors.exc("1002", f"VM {vm.uuid} is {vm.state}; wait until it is Running or Stopped")
        if vm is not None and vm.state != "Destroyed" and vol.primary_storage_uuid:
            ps = await self.ps(vol.primary_storage_uuid)
            await self.node.bus.call_ok(VmDetachDiskMsg(vm_instance_uuid=vm.uuid, volume=vol,
                                                        disk=self.factory(ps.type).disk_to(vol)))

        def record() -> VolumeInventory:
            VolumeVO.update(vm_instance_uuid=None, device_id=None, last_vm_instance_uuid=vol.vm_instance_uuid).where(
                VolumeVO.uuid == vol.uuid).execute()
            return VolumeVO.get(VolumeVO.uuid == vol.uuid).to_inventory()  # type: ignore[no-any-return]

        return APIVolumeEvent(inventory=await self.node.db.atomic(record))

    # -- resize --------------------------------------------------------------------------------

    @handles(APIResizeDataVolumeMsg)
    async def resize_data(self, msg: APIResizeDataVolumeMsg) -> APIVolumeEvent:
        return await self.serial(f"volume-{msg.uuid}", lambda: self._resize(msg.uuid, msg.size, "Data"))

    @handles(APIResizeRootVolumeMsg)
    async def resize_root(self, msg: APIResizeRootVolumeMsg) -> APIVolumeEvent:
        return await self.serial(f"volume-{msg.uuid}", lambda: self._resize(msg.uuid, msg.size, "Root"))

    async def _resize(self, uuid: str, size: int, kind: str) -> APIVolumeEvent:
        vol = await self.volume(uuid)
        if vol.type != kind:
            raise VolumeErrors.exc("1000", f"volume {uuid} is a {vol.type} volume; use Resize{vol.type}Volume")
        if size <= vol.size:
            raise VolumeErrors.exc("1000", f"volumes only grow: volume {uuid} has {vol.size} bytes, asked for {size}",
                                   field="size")
        if vol.status == "NotInstantiated":
            await self.node.db.atomic(lambda: VolumeVO.update(size=size).where(VolumeVO.uuid == uuid).execute())
            return APIVolumeEvent(inventory=await self.volume(uuid))
        if vol.status != "Ready":
            raise VolumeErrors.exc("1001", f"volume {uuid} is {vol.status}")
        if vol.vm_instance_uuid:
            vm = await self.vm(vol.vm_instance_uuid)
            if vm.state not in ATTACHABLE_VM_STATES:
                raise VolumeErrors.exc("1002", f"VM {vm.uuid} is {vm.state}")
        assert vol.primary_storage_uuid and vol.host_uuid
        ps_uuid, host_uuid, delta = vol.primary_storage_uuid, vol.host_uuid, size - vol.size

        def grow() -> None:
            if not capacity.reserve_sync(ps_uuid, host_uuid, delta, self.hold_back(ps_uuid)):
                raise PrimaryStorageErrors.exc("1001", f"host {host_uuid} has no {delta} more bytes for volume {uuid}")
            VolumeVO.update(size=size).where(VolumeVO.uuid == uuid).execute()

        def undo() -> None:
            if VolumeVO.update(size=vol.size).where((VolumeVO.uuid == uuid) & (VolumeVO.size == size)).execute() == 1:
                capacity.return_sync(ps_uuid, host_uuid, delta)

        await self.node.db.atomic(grow)
        try:
            ps = await self.ps(ps_uuid)
            facts = await self.factory(ps.type).resize_volume(self.node, ps, await self.host(host_uuid), vol, size)
        except BaseException:
            await self.node.db.atomic(undo)
            raise
        await self.node.db.atomic(lambda: VolumeVO.update(actual_size=facts.actual_size).where(
            VolumeVO.uuid == uuid).execute())
        return APIVolumeEvent(inventory=await self.volume(uuid))

    # -- delete / recover / expunge ------------------------------------------------------------

    @handles(APIDeleteDataVolumeMsg)
    async def delete_volume(self, msg: APIDeleteDataVolumeMsg) -> APIVolumeEvent:
        async def delete() -> APIVolumeEvent:
            vol = await self.volume(msg.uuid)
            if vol.type != "Data":
                raise VolumeErrors.exc("1000", f"volume {vol.uuid} is a root volume; it goes with its VM")
            if vol.status == "Deleted":
                raise VolumeErrors.exc("1001", f"volume {vol.uuid} is already deleted")

            def mark() -> None:
                n = VolumeVO.update(status="Deleted").where(
                    (VolumeVO.uuid == vol.uuid) & VolumeVO.vm_instance_uuid.is_null()).execute()
                if n != 1:
                    raise VolumeErrors.exc("1005", f"volume {vol.uuid} is attached to VM {vol.vm_instance_uuid}; "
                                                   "detach it before deleting it")

            await self.node.db.atomic(mark)
            if self.node.configs.get(*DELETION_POLICY) == "Direct":
                await self.release([vol.uuid])
            return APIVolumeEvent()

        return await self.serial(f"volume-{msg.uuid}", delete)

    @handles(APIRecoverDataVolumeMsg)
    async def recover_volume(self, msg: APIRecoverDataVolumeMsg) -> APIVolumeEvent:
        async def recover() -> APIVolumeEvent:
            vol = await self.volume(msg.uuid)
            if vol.status != "Deleted":
                raise VolumeErrors.exc("1001", f"volume {vol.uuid} is {vol.status}, not Deleted")
            status = "Ready" if vol.install_path else "NotInstantiated"
            await self.node.db.atomic(lambda: VolumeVO.update(status=status).where(VolumeVO.uuid == vol.uuid).execute())
            return APIVolumeEvent(inventory=await self.volume(vol.uuid))

        return await self.serial(f"volume-{msg.uuid}", recover)

    @handles(APIExpungeDataVolumeMsg)
    async def expunge_volume(self, msg: APIExpungeDataVolumeMsg) -> APIVolumeEvent:
        async def expunge() -> APIVolumeEvent:
            vol = await self.volume(msg.uuid)
            if vol.status != "Deleted" or vol.vm_instance_uuid is not None:
                raise VolumeErrors.exc("1001", f"volume {vol.uuid} is {vol.status}; delete it before expunging it")
            await self.release([vol.uuid])
            return APIVolumeEvent()

        return await self.serial(f"volume-{msg.uuid}", expunge)
