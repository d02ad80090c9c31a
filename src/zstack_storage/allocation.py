"""Placing volumes: reserve capacity on a primary storage of a host, make the files, release.

Three steps, each undoable, used by VM creation (root and data volumes) and by attaching a data
volume that was never placed:

* :meth:`VolumeAllocation.allocate` picks a primary storage attached to the host's cluster and,
  in one transaction, takes the capacity and writes the volume rows (status ``Creating``);
* :meth:`VolumeAllocation.instantiate` makes sure the image is cached in the host's pool and
  creates the volume files (root volumes as qcow2 overlays of the cache), marking rows ``Ready``;
* :meth:`VolumeAllocation.release` deletes files, then rows, returning capacity in the
  transaction that deletes each row, so it is returned once however often release runs.
"""

from __future__ import annotations

import logging
import os

import attrs

from zstack_core.errors import ZStackError
from zstack_core.header.compute import HostInventory
from zstack_core.header.storage import ImageInventory, PrimaryStorageInventory, VolumeFacts, VolumeInventory
from zstack_core.ownership import disown_sync, own_sync

from . import capacity
from .errors import PrimaryStorageErrors
from .local_storage import LOCAL_STORAGE
from .models import ImageCacheVO, LocalStorageHostRefVO, PrimaryStorageClusterRefVO, PrimaryStorageVO, VolumeSnapshotVO, VolumeVO
from zstack_core.prepared import InsertRow, Prepared
from .primary_storage import PrimaryStorageHandlers

log = logging.getLogger("zstack.storage.allocation")

# The statements of every VM create, compiled once (see .prepared).
_P, _H, _R, _C = PrimaryStorageVO, LocalStorageHostRefVO, PrimaryStorageClusterRefVO, ImageCacheVO
_CANDIDATES = Prepared(lambda p: _P.select(_P.uuid).join(_R, on=(_R.primary_storage_uuid == _P.uuid))
                       .join(_H, on=((_H.primary_storage_uuid == _P.uuid) & (_H.host_uuid == p.host)))
                       .where((_R.cluster_uuid == p.cluster) & (_P.state == p.enabled) & (_P.status == p.connected))
                       .order_by(_H.available_capacity.desc()))
_INSERT_VOLUME = InsertRow(VolumeVO)
_CACHE = Prepared(lambda p: _C.select().where((_C.primary_storage_uuid == p.ps) & (_C.host_uuid == p.host)
                                              & (_C.image_uuid == p.image)))
_READY = Prepared(lambda p: VolumeVO.update(status=p.status, install_path=p.path, actual_size=p.actual_int,
                                            format=p.format).where(VolumeVO.uuid == p.uuid))


@attrs.frozen(kw_only=True)
class NewVolume:
    """A volume to place: a new row, or (``existing``) a ``NotInstantiated`` one."""

    uuid: str
    name: str
    type: str
    size: int
    device_id: int | None = None
    vm_instance_uuid: str | None = None
    root_image_uuid: str | None = None
    disk_offering_uuid: str | None = None
    description: str = ""
    account_uuid: str | None = None
    existing: bool = False


class VolumeAllocation(PrimaryStorageHandlers):

    @staticmethod
    def candidates_sync(host: HostInventory) -> list[str]:
        """Primary storage usable on ``host``: attached to its cluster, enabled, connected, with a
        share on the host; most available first (database thread)."""
        return [uuid for (uuid,) in _CANDIDATES.run(host=host.uuid, cluster=host.cluster_uuid, enabled="Enabled",
                                                     connected="Connected").fetchall()]

    async def candidates(self, host: HostInventory) -> list[str]:
        return await self.node.db.run(self.candidates_sync, host)

    async def allocate(self, host: HostInventory, volumes: list[NewVolume], only_ps: str | None = None,
                       created: dict[str, VolumeInventory] | None = None) -> str:
        """Reserve room for ``volumes`` on one primary storage of ``host``; return its UUID.
        ``created``: filled with the inventories of the rows written (new volumes), for
        :meth:`instantiate` to use instead of reading them back.

        One transaction finds the candidates and takes the first that has room: a candidate
        without room changes nothing (its conditional ``UPDATE`` matches no row), so trying the
        next one in the same transaction is what separate transactions did, in one round trip.
        """
        need = sum(v.size for v in volumes)
        written: dict[str, VolumeInventory] = {}

        def take(ps_uuid: str) -> bool:
            if not capacity.reserve_sync(ps_uuid, host.uuid, need, self.hold_back(ps_uuid)):
                return False
            for v in volumes:
                placed = {"primary_storage_uuid": ps_uuid, "host_uuid": host.uuid, "status": "Creating"}
                if v.existing:
                    n = VolumeVO.update(**placed).where((VolumeVO.uuid == v.uuid)
                                                        & (VolumeVO.status == "NotInstantiated")).execute()
                    if n != 1:
                        raise PrimaryStorageErrors.exc("1000", f"volume {v.uuid} was placed meanwhile")
                    continue
                row = VolumeVO(uuid=v.uuid, name=v.name, description=v.description, type=v.type, size=v.size,
                               format="qcow2", vm_instance_uuid=v.vm_instance_uuid, device_id=v.device_id,
                               root_image_uuid=v.root_image_uuid, disk_offering_uuid=v.disk_offering_uuid, **placed)
                _INSERT_VOLUME.run(row)
                written[v.uuid] = row.to_inventory()
                own_sync(v.uuid, "Volume", v.account_uuid)
            return True

        def place() -> tuple[list[str], str | None]:
            found = self.candidates_sync(host)
            if only_ps is not None:
                found = [c for c in found if c == only_ps]
            for ps_uuid in found:
                if take(ps_uuid):
                    return found, ps_uuid
            return found, None

        candidates, placed = await self.node.db.atomic(place)
        if placed is not None:
            if created is not None:
                created.update(written)
            return placed
        if not candidates:
            which = f"primary storage {only_ps}" if only_ps else "no primary storage"
            raise PrimaryStorageErrors.exc("1004", f"{which} attached to cluster {host.cluster_uuid} is usable on "
                                                   f"host {host.uuid}" + (" there" if only_ps else ""))
        H = LocalStorageHostRefVO
        best = await self.node.db.run(lambda: max((r.available_capacity for r in H.select().where(
            (H.host_uuid == host.uuid) & H.primary_storage_uuid.in_(candidates))), default=0))
        raise PrimaryStorageErrors.exc("1001", f"host {host.uuid} needs {need} bytes for {len(volumes)} volumes; "
                                               f"its primary storage has at most {best} available "
                                               f"(less the reserved capacity)", needed=need, available=best)

    async def ensure_image_cache(self, ps_uuid: str, host: HostInventory, image: ImageInventory) -> VolumeFacts:
        """The image's copy in ``ps`` on ``host``, uploaded the first time (once per pool)."""
        C = ImageCacheVO
        where = (C.primary_storage_uuid == ps_uuid) & (C.host_uuid == host.uuid) & (C.image_uuid == image.uuid)

        async def ensure() -> VolumeFacts:
            found = await self.node.db.run(lambda: _CACHE.rows(C, ps=ps_uuid, host=host.uuid, image=image.uuid))
            row = found[0] if found else None
            if row is not None and row.status == "Ready":
                return VolumeFacts(install_path=row.install_path or "", size=row.virtual_size, actual_size=row.size,
                                   format=row.format)
            source = await self.image_path(image.uuid)
            if image.status != "Ready" or not source:
                raise PrimaryStorageErrors.exc("1000", f"image {image.uuid} is {image.status}, it cannot be cached")

            def reserve() -> None:
                if C.get_or_none(where) is not None:
                    return  # a leftover of an interrupted upload still holds its reservation
                if not capacity.reserve_sync(ps_uuid, host.uuid, image.actual_size, self.hold_back(ps_uuid)):
                    raise PrimaryStorageErrors.exc("1001", f"no room for the {image.actual_size}-byte cache of "
                                                           f"image {image.uuid} on host {host.uuid}")
                C.create(primary_storage_uuid=ps_uuid, host_uuid=host.uuid, image_uuid=image.uuid,
                         size=image.actual_size, virtual_size=image.size, status="Creating")

            await self.node.db.atomic(reserve)
            ps = await self.ps(ps_uuid)
            try:
                facts = await self.factory(ps.type).create_image_cache(self.node, ps, host, image, source)
            except BaseException:
                cache = await self.node.db.run(lambda: C.get_or_none(where))
                if cache is not None:
                    await self.node.db.atomic(capacity.drop_cache_sync, cache.id)
                raise
            await self.node.db.atomic(lambda: C.update(status="Ready", install_path=facts.install_path,
                                                       format=facts.format).where(where).execute())
            return facts

        return await self.serial(f"cache-{ps_uuid}-{host.uuid}-{image.uuid}", ensure)

    async def instantiate(self, ps_uuid: str, host: HostInventory, volume_uuids: list[str],
                          image: ImageInventory | None = None,
                          ps: PrimaryStorageInventory | None = None,
                          known: dict[str, VolumeInventory] | None = None) -> list[VolumeInventory]:
        """Create the files of allocated volumes; a root volume is an overlay of ``image``'s cache
        (or blank, for an ISO, whose cache the VM gets as its cdrom). ``ps``: the primary
        storage's inventory when the caller has read it already; ``known``: the volumes as
        :meth:`allocate` wrote them (others are read)."""
        if ps is None or ps.uuid != ps_uuid:
            ps = await self.ps(ps_uuid)
        factory = self.factory(ps.type)
        cache = await self.ensure_image_cache(ps_uuid, host, image) if image is not None else None
        backing = cache if image is not None and image.media_type != "ISO" else None
        made: list[str] = []
        out: list[VolumeInventory] = []
        try:
            for uuid in volume_uuids:
                vol = (known or {}).get(uuid) or await self.volume(uuid)
                facts = await factory.create_volume(self.node, ps, host, vol, backing if vol.type == "Root" else None)
                made.append(facts.install_path)

                def ready(uuid: str = uuid, facts: VolumeFacts = facts) -> int:
                    return int(_READY.run(status="Ready", path=facts.install_path, actual_int=facts.actual_size,
                                          format=facts.format, uuid=uuid).rowcount)

                if not await self.node.db.run(ready):
                    raise PrimaryStorageErrors.exc("1000", f"volume {uuid} was deleted while its file was made")
                # The row as just written (the UPDATE sets exactly these; no need to read it back).
                out.append(attrs.evolve(vol, status="Ready", install_path=facts.install_path,
                                        actual_size=facts.actual_size, format=facts.format))
        except BaseException:
            for path in made:
                try:
                    await factory.delete_volume(self.node, ps, host, path)
                except ZStackError as exc:
                    log.error("could not remove %s from host %s after a failed create: %s", path, host.uuid, exc.error)
            raise
        return out

    # -- release -------------------------------------------------------------------------------

    @staticmethod
    def drop_volume_sync(uuid: str, back_to_not_instantiated: bool = False) -> None:
        """Delete a volume row (or put it back to ``NotInstantiated``) and return its capacity,
        in one transaction (database thread)."""
        row = VolumeVO.get_or_none(VolumeVO.uuid == uuid)
        if row is None:
            return
        if back_to_not_instantiated:
            n = VolumeVO.update(status="NotInstantiated", primary_storage_uuid=None, host_uuid=None, install_path=None,
                                actual_size=0).where((VolumeVO.uuid == uuid) & (VolumeVO.status == row.status)).execute()
        else:
            n = VolumeVO.delete().where(VolumeVO.uuid == uuid).execute()
            VolumeSnapshotVO.delete().where(VolumeSnapshotVO.volume_uuid == uuid).execute()
            disown_sync(uuid)
        if n == 1 and row.status in capacity.ALLOCATED_STATUSES and row.primary_storage_uuid and row.host_uuid:
            capacity.return_sync(row.primary_storage_uuid, row.host_uuid, row.size)

    async def delete_file(self, vol: VolumeInventory) -> None:
        """Delete the volume's file from its host. A host that no longer exists took it along."""
        if not (vol.host_uuid and vol.primary_storage_uuid) or not (vol.install_path or vol.status == "Creating"):
            return
        try:
            host = await self.host(vol.host_uuid)
        except ZStackError as exc:
            if exc.code == "SYS.1004":
                return
            raise
        ps = await self.ps(vol.primary_storage_uuid)
        path = vol.install_path
        if not path and ps.type == LOCAL_STORAGE:
            # Still Creating: its file may exist, made just before the node stopped, under the
            # name local storage gives every volume (recorded only once it was made).
            path = os.path.join(ps.url, f"{vol.type.lower()}-{vol.uuid}.qcow2")
        if path:
            await self.factory(ps.type).delete_volume(self.node, ps, host, path)

    async def release(self, volume_uuids: list[str], back_to_not_instantiated: bool = False) -> None:
        """Delete the volumes' files and rows and return their capacity. A file that cannot be
        deleted (host unreachable) keeps its row as ``Deleted``, detached, still holding its
        capacity, and the first such failure is raised after the others were released."""
        failure: ZStackError | None = None
        for uuid in volume_uuids:
            row = await self.node.db.run(lambda uuid=uuid: VolumeVO.get_or_none(VolumeVO.uuid == uuid))
            if row is None:
                continue
            try:
                await self.delete_file(row.to_inventory())
            except ZStackError as exc:
                log.error("volume %s: could not delete %s: %s", uuid, row.install_path, exc.error)
                await self.node.db.atomic(lambda uuid=uuid: VolumeVO.update(
                    status="Deleted", vm_instance_uuid=None, device_id=None,
                    last_vm_instance_uuid=row.vm_instance_uuid).where(VolumeVO.uuid == uuid).execute())
                failure = failure or exc
                continue
            await self.node.db.atomic(self.drop_volume_sync, uuid, back_to_not_instantiated)
        if failure is not None:
            raise failure
