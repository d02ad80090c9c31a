"""Volume snapshots: qcow2 internal snapshots, taken while the volume's VM is stopped.

``qemu-img snapshot -c/-a/-d`` on the volume's file, named by the snapshot's UUID, run where
the file is (the host's worker thread; the host must be this machine). Internal snapshots keep
each volume one file, so expunging a volume takes its snapshots with it and nothing in the pool
refers to them. A running VM holds its disk open (and QEMU locks it), so create, revert and
delete all need the VM stopped: ``VOLUME.1002`` otherwise. Live snapshots would need libvirt's
external snapshots (a new overlay per snapshot), which this version does not do.
"""

from __future__ import annotations

from zstack_core import handles, invalid_argument
from zstack_core.db import new_uuid
from zstack_core.errors import ZStackError
from zstack_core.header.storage import VolumeInventory
from zstack_core.ownership import disown_sync, own_sync

from .api import (
    APICreateVolumeSnapshotMsg,
    APIDeleteVolumeSnapshotMsg,
    APIRevertVolumeFromSnapshotMsg,
    APIVolumeSnapshotEvent,
)
from .base import StorageBase, not_found
from .errors import VolumeErrors
from .models import VolumeSnapshotVO

STOPPED_VM_STATES = ("Stopped", "Destroyed")


class SnapshotHandlers(StorageBase):

    async def _quiesced(self, volume_uuid: str, what: str) -> VolumeInventory:
        """The volume, if its file may be changed now: Ready qcow2, VM (if any) not running."""
        vol = await self.volume(volume_uuid, "volumeUuid")
        if vol.status != "Ready" or not vol.install_path:
            raise VolumeErrors.exc("1001", f"volume {vol.uuid} is {vol.status}; {what} needs a Ready volume")
        if vol.format != "qcow2":
            raise VolumeErrors.exc("1004", f"volume {vol.uuid} is {vol.format}; internal snapshots need qcow2")
        if vol.vm_instance_uuid:
            vm = await self.vm(vol.vm_instance_uuid)
            if vm.state not in STOPPED_VM_STATES:
                raise VolumeErrors.exc("1002", f"VM {vm.uuid} is {vm.state}; stop it to {what} "
                                               f"(internal snapshots change the disk file)")
        return vol

    async def _run(self, vol: VolumeInventory, action: str, name: str) -> None:
        assert vol.primary_storage_uuid and vol.host_uuid
        ps = await self.ps(vol.primary_storage_uuid)
        host = await self.host(vol.host_uuid)
        await self.factory(ps.type).snapshot(self.node, ps, host, vol, action, name)

    async def _snapshot(self, uuid: str) -> VolumeSnapshotVO:
        row = await self.node.db.run(lambda: VolumeSnapshotVO.get_or_none(VolumeSnapshotVO.uuid == uuid))
        if row is None:
            raise not_found("volume snapshot", uuid, "uuid")
        return row

    @handles(APICreateVolumeSnapshotMsg)
    async def create_snapshot(self, msg: APICreateVolumeSnapshotMsg) -> APIVolumeSnapshotEvent:
        if not msg.name.strip():
            raise invalid_argument("name cannot be empty", "name")

        async def create() -> APIVolumeSnapshotEvent:
            vol = await self._quiesced(msg.volume_uuid, "take a snapshot")
            uuid = new_uuid()
            await self._run(vol, "create", uuid)

            def record() -> VolumeSnapshotVO:
                row = VolumeSnapshotVO.create(
                    uuid=uuid, name=msg.name, description=msg.description, volume_uuid=vol.uuid,
                    volume_type=vol.type, primary_storage_uuid=vol.primary_storage_uuid, host_uuid=vol.host_uuid,
                    format=vol.format, primary_storage_install_path=f"{vol.install_path}@{uuid}")
                own_sync(uuid, "VolumeSnapshot", msg.account_uuid)
                return row

            try:
                row = await self.node.db.atomic(record)
            except BaseException:
                await self._run(vol, "delete", uuid)  # no record, no snapshot
                raise
            return APIVolumeSnapshotEvent(inventory=row.to_inventory())

        return await self.serial(f"volume-{msg.volume_uuid}", create)

    @handles(APIRevertVolumeFromSnapshotMsg)
    async def revert_snapshot(self, msg: APIRevertVolumeFromSnapshotMsg) -> APIVolumeSnapshotEvent:
        snap = await self._snapshot(msg.uuid)

        async def revert() -> APIVolumeSnapshotEvent:
            vol = await self._quiesced(snap.volume_uuid, "revert it")
            await self._run(vol, "revert", snap.uuid)
            return APIVolumeSnapshotEvent(inventory=snap.to_inventory())

        return await self.serial(f"volume-{snap.volume_uuid}", revert)

    @handles(APIDeleteVolumeSnapshotMsg)
    async def delete_snapshot(self, msg: APIDeleteVolumeSnapshotMsg) -> APIVolumeSnapshotEvent:
        snap = await self._snapshot(msg.uuid)

        async def delete() -> APIVolumeSnapshotEvent:
            vol = await self._quiesced(snap.volume_uuid, "delete a snapshot")
            try:
                await self._run(vol, "delete", snap.uuid)
            except ZStackError as exc:
                # Already gone from the file (deleted by hand): the record goes too.
                if "Can't find the snapshot" not in exc.error.details:
                    raise

            def drop() -> None:
                VolumeSnapshotVO.delete().where(VolumeSnapshotVO.uuid == snap.uuid).execute()
                disown_sync(snap.uuid)

            await self.node.db.atomic(drop)
            return APIVolumeSnapshotEvent()

        return await self.serial(f"volume-{snap.volume_uuid}", delete)
