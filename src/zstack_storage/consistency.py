"""Storage's part of ``zstack check``: pool volumes against volume rows, capacity, leftovers.

* ``storage.volumes``: in the pool of each local primary storage on each connected host, every
  file belongs to a volume or an image cache row, and every Ready (or Deleted, not yet expunged)
  volume and Ready image cache has its file.
* ``storage.capacity``: on every (primary storage, host), ``total - available`` equals the sizes
  of the volumes and image caches placed there (:mod:`.capacity`), and the primary storage row
  carries the sums of its hosts.
* ``storage.leftovers``: volumes left ``Creating``, image caches left ``Creating`` (a partial
  upload), images left ``Downloading`` and ``*.part`` files in the image store with no download
  in progress, and volumes attached to VMs that no longer exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libvirt

from zstack_core.check import CheckContext, ConsistencyCheck, Finding

from . import capacity
from .local_storage import LOCAL_STORAGE, pool_name
from .models import ImageCacheVO, ImageVO, LocalStorageHostRefVO, PrimaryStorageVO, VolumeVO

if TYPE_CHECKING:
    from .plugin import StorageService

__all__ = ["CHECKS", "LeftoverCheck", "PoolVolumeCheck", "StorageCapacityCheck", "pool_files"]


def pool_files(conn: libvirt.virConnect, pool: str) -> dict[str, str] | None:
    """Path -> volume name of every volume in ``pool`` (refreshed first); None: no such pool."""
    try:
        p = conn.storagePoolLookupByName(pool)
    except libvirt.libvirtError:
        return None
    if p.isActive():
        p.refresh(0)
    return {v.path(): v.name() for v in p.listAllVolumes(0)}


def _service(ctx: CheckContext) -> StorageService:
    return ctx.node.services["storage"]  # type: ignore[no-any-return]


def _busy_volume(ctx: CheckContext, vol: Any) -> bool:
    vm = vol.vm_instance_uuid or vol.last_vm_instance_uuid
    return (ctx.busy(f"storage-volume-{vol.uuid}") or (vm is not None and (
        ctx.busy(f"vm-{vm}") or ctx.busy(f"storage-vm-disks-{vm}"))))


class PoolVolumeCheck(ConsistencyCheck):
    name = "storage.volumes"
    description = "volume files in each host's pool against volumes and image caches"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        def load() -> tuple[dict[str, str], list[Any], list[Any], list[Any]]:
            ps_types = {p.uuid: p.type for p in PrimaryStorageVO.select(PrimaryStorageVO.uuid, PrimaryStorageVO.type)}
            return (ps_types, list(LocalStorageHostRefVO.select()), list(VolumeVO.select()),
                    list(ImageCacheVO.select()))

        ps_types, refs, volumes, caches = await ctx.db(load)
        reachable = {h.uuid for h in await ctx.reachable_hosts()}
        out: list[Finding] = []
        for ref in refs:
            ps_uuid, host_uuid = ref.primary_storage_uuid, ref.host_uuid
            if host_uuid not in reachable or ps_types.get(ps_uuid) != LOCAL_STORAGE:
                continue
            if ctx.busy(f"storage-ps-{ps_uuid}"):
                continue
            pool = pool_name(ps_uuid)
            files = await ctx.on_host(host_uuid, lambda conn, pool=pool: pool_files(conn, pool))
            if files is None:
                out.append(self.finding("missing-pool", "PrimaryStorage", ps_uuid,
                                        f"pool {pool} is not defined on the host", host_uuid))
                continue
            here = [v for v in volumes if v.primary_storage_uuid == ps_uuid and v.host_uuid == host_uuid]
            cached = [c for c in caches if c.primary_storage_uuid == ps_uuid and c.host_uuid == host_uuid]
            known = {v.install_path for v in here if v.install_path} | {c.install_path for c in cached if c.install_path}
            # Files of rows still Creating have no path in their row yet: by name, they are the
            # half-made files of interrupted work, not strangers.
            creating = {f"{v.type.lower()}-{v.uuid}": ("Volume", v.uuid) for v in here if v.status == "Creating"}
            creating.update({f"image-{c.image_uuid}": ("Image", c.image_uuid) for c in cached if c.status == "Creating"})
            for path, name in sorted(files.items()):
                if path in known:
                    continue
                stem = name.split(".", 1)[0]
                if stem in creating:
                    rtype, ruuid = creating[stem]
                    out.append(self.finding("partial-volume-file", rtype, ruuid,
                                            f"{path} in pool {pool} was being made when its work stopped", host_uuid))
                    continue
                out.append(self.finding("orphan-volume-file", "PrimaryStorage", ps_uuid,
                                        f"{path} in pool {pool} belongs to no volume and no image cache", host_uuid))
            for v in here:
                if v.status in ("Ready", "Deleted") and v.install_path and v.install_path not in files \
                        and not _busy_volume(ctx, v):
                    out.append(self.finding("missing-volume-file", "Volume", v.uuid,
                                            f"{v.status} volume's file {v.install_path} is not in pool {pool}", host_uuid))
            for c in cached:
                if c.status == "Ready" and c.install_path and c.install_path not in files:
                    out.append(self.finding("missing-image-cache-file", "Image", c.image_uuid,
                                            f"the cache {c.install_path} is not in pool {pool}", host_uuid))
        return out


class StorageCapacityCheck(ConsistencyCheck):
    name = "storage.capacity"
    description = "primary storage capacity against the volumes and image caches holding it"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        def scan() -> list[tuple[str, str, str | None, str]]:
            out: list[tuple[str, str, str | None, str]] = []
            sums: dict[str, list[int]] = {}
            for ref in LocalStorageHostRefVO.select():
                held = capacity.allocated_sync(ref.primary_storage_uuid, ref.host_uuid)
                used = ref.total_capacity - ref.available_capacity
                if used != held:
                    out.append(("capacity-mismatch", ref.primary_storage_uuid, ref.host_uuid,
                                f"total {ref.total_capacity} - available {ref.available_capacity} = {used} bytes "
                                f"in use, but its volumes and image caches hold {held} (leaked: {used - held})"))
                s = sums.setdefault(ref.primary_storage_uuid, [0, 0])
                s[0] += ref.total_capacity
                s[1] += ref.available_capacity
            for ps in PrimaryStorageVO.select():
                total, available = sums.get(ps.uuid, [0, 0])
                if (ps.total_capacity, ps.available_capacity) != (total, available):
                    out.append(("capacity-sum-mismatch", ps.uuid, None,
                                f"total/available {ps.total_capacity}/{ps.available_capacity}, but its hosts add "
                                f"up to {total}/{available}"))
            return out

        # Every reservation and return is made in the transaction that writes the row holding
        # it, so one consistent read adds up even while volumes are being made.
        found = await ctx.node.db.atomic(scan)
        return [self.finding(kind, "PrimaryStorage", ps, details, host) for kind, ps, host, details in found]


class LeftoverCheck(ConsistencyCheck):
    name = "storage.leftovers"
    description = "volumes and image caches left Creating, partial downloads, volumes of missing VMs"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        service = _service(ctx)

        def load() -> tuple[list[Any], list[Any], list[Any]]:
            return (list(VolumeVO.select()), list(ImageCacheVO.select().where(ImageCacheVO.status != "Ready")),
                    list(ImageVO.select().where(ImageVO.status == "Downloading")))

        volumes, caches, downloading = await ctx.db(load)
        out: list[Finding] = []
        vm_uuids = {v.vm_instance_uuid for v in volumes if v.vm_instance_uuid}
        existing = {vm.uuid for vm in await ctx.find("VmInstance", [("uuid", "in", sorted(vm_uuids))])} \
            if vm_uuids and "VmInstance" in ctx.node.query.resources else vm_uuids
        for v in volumes:
            if _busy_volume(ctx, v):
                continue
            if v.status == "Creating":
                out.append(self.finding("volume-stuck-creating", "Volume", v.uuid,
                                        f"left Creating (holding {v.size} bytes) with no operation running on it",
                                        v.host_uuid))
            if v.vm_instance_uuid and v.vm_instance_uuid not in existing:
                out.append(self.finding("volume-of-missing-vm", "Volume", v.uuid,
                                        f"attached to VM {v.vm_instance_uuid}, which does not exist", v.host_uuid))
        for c in caches:
            if not ctx.busy(f"storage-cache-{c.primary_storage_uuid}-{c.host_uuid}-{c.image_uuid}"):
                out.append(self.finding("partial-image-cache", "Image", c.image_uuid,
                                        f"an image cache left {c.status} (holding {c.size} bytes) in primary storage "
                                        f"{c.primary_storage_uuid}", c.host_uuid))
        for image in downloading:
            if image.uuid not in service.downloads:
                out.append(self.finding("partial-image-download", "Image", image.uuid,
                                        "left Downloading with no download in progress"))
        store = service.image_dir()
        in_progress = set(service.downloads)
        if store.is_dir():
            for part in sorted(store.glob("*.part")):
                if Path(part).name.split(".", 1)[0] not in in_progress:
                    out.append(self.finding("partial-file", "Image", None,
                                            f"{part} is a partial download no download is writing"))
        return out


CHECKS: list[ConsistencyCheck] = [PoolVolumeCheck(), StorageCapacityCheck(), LeftoverCheck()]
