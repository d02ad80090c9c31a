"""What storage adds to compute's VM life cycle, through zstack_core's contracts only.

* ``vm-create`` flows: :class:`AllocatePrimaryStorageFlow` (``ALLOCATE_PRIMARY_STORAGE``) reserves
  room for the root and data volumes on a primary storage the destination host reaches, and
  :class:`AllocateVolumeFlow` (``ALLOCATE_VOLUME``) caches the image in the host's pool and
  creates the volumes; each one's rollback undoes its part.
* :class:`PrimaryStorageAllocatorFilter` keeps only hosts with room for those volumes.
* :class:`VmVolumes` answers the VM hooks: the create check, the disks of the domain, and the
  release of volumes on rollback or expunge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zstack_core import Flow, SysErrors
from zstack_core.db import new_uuid
from zstack_core.header.backends import HostAllocatorFilter
from zstack_core.header.compute import HostInventory, VmInstanceSpec
from zstack_core.header.devices import DiskTO
from zstack_core.header.storage import ImageInventory, PrimaryStorageInventory

from .allocation import NewVolume
from .errors import ImageErrors, PrimaryStorageErrors, VolumeErrors
from .models import ImageCacheVO, ImageVO, LocalStorageHostRefVO, PrimaryStorageClusterRefVO, PrimaryStorageVO, VolumeVO
from zstack_core.prepared import Prepared

if TYPE_CHECKING:
    from .plugin import StorageService

__all__ = ["AllocatePrimaryStorageFlow", "AllocateVolumeFlow", "PrimaryStorageAllocatorFilter", "VmVolumes"]

_PLAN = "storage.volumes"
_PS = "storage.primary_storage_uuid"
_WRITTEN = "storage.volumes_written"


def _service(data: dict[str, Any]) -> StorageService:
    return data["node"].services["storage"]  # type: ignore[no-any-return]


class VmVolumes:
    """The volumes a VM gets, computed from its spec; and the VM hooks of storage."""

    def __init__(self, service: StorageService) -> None:
        self.s = service

    async def image_of(self, spec: VmInstanceSpec) -> ImageInventory | None:
        """The VM's image, read once per spec: the create check reads it, and the filter, the
        flows and the domain's disks of the same create use ``spec.image``."""
        uuid = spec.image_uuid or spec.vm.image_uuid
        if uuid is None:
            return None
        if spec.image is None or spec.image.uuid != uuid:
            spec.image = await self.s.image(uuid)
        return spec.image

    async def ps_of(self, spec: VmInstanceSpec, uuid: str) -> PrimaryStorageInventory:
        """A primary storage, read once per spec (its type and URL are what the flows and the
        domain's disks need; its capacity figures are not used from here)."""
        cache: dict[str, PrimaryStorageInventory] = spec.extra.setdefault("storage", {}).setdefault("ps", {})
        ps = cache.get(uuid)
        if ps is None:
            ps = cache[uuid] = await self.s.ps(uuid)
        return ps

    async def plan(self, spec: VmInstanceSpec) -> list[NewVolume]:
        """Root volume (from the image; none for a VM without one) then data volumes, in
        device order."""
        image = await self.image_of(spec)
        vm, out = spec.vm, []
        if image is not None:
            size = spec.root_disk_size or 0
            if image.media_type != "ISO":
                size = max(image.size, size)
            out.append(NewVolume(uuid=new_uuid(), name=f"ROOT-for-{vm.name}", type="Root", size=size, device_id=0,
                                 vm_instance_uuid=vm.uuid, root_image_uuid=image.uuid, account_uuid=spec.account_uuid))
        sizes: list[tuple[str | None, int]] = [(o, await self.s.disk_offering_size(o, "dataDiskOfferingUuids")) for o in spec.data_disk_offering_uuids]
        sizes += [(None, s) for s in spec.data_disk_sizes]
        for i, (offering, size) in enumerate(sizes, start=1):
            out.append(NewVolume(uuid=new_uuid(), name=f"DATA-for-{vm.name}", type="Data", size=size, device_id=i,
                                 vm_instance_uuid=vm.uuid, disk_offering_uuid=offering, account_uuid=spec.account_uuid))
        return out

    async def check(self, spec: VmInstanceSpec) -> None:
        """``zstack_vm_create_check``: the image is usable and the disks are within limits."""
        image = await self.image_of(spec)
        if image is not None:
            if image.status != "Ready" or image.state != "Enabled":
                raise ImageErrors.exc("1005", f"image {image.uuid} is {image.status}/{image.state}; VMs need a Ready image")
            if image.media_type == "DataVolumeTemplate":
                raise ImageErrors.exc("1000", f"image {image.uuid} is a data volume template, not a root volume template")
            if image.media_type == "ISO" and not spec.root_disk_size:
                raise VolumeErrors.exc("1000", "a VM made from an ISO needs rootDiskSize for its blank root volume")
        if spec.root_disk_size is not None and spec.root_disk_size <= 0:
            raise VolumeErrors.exc("1000", f"rootDiskSize must be positive, got {spec.root_disk_size}")
        if any(s <= 0 for s in spec.data_disk_sizes):
            raise VolumeErrors.exc("1000", f"data disk sizes must be positive, got {spec.data_disk_sizes}")
        for offering in spec.data_disk_offering_uuids:
            await self.s.disk_offering_size(offering, "dataDiskOfferingUuids")
        count = len(spec.data_disk_offering_uuids) + len(spec.data_disk_sizes)
        limit = self.s.max_data_volumes(spec.vm.hypervisor_type)
        if count > limit:
            raise VolumeErrors.exc("1003", f"{count} data volumes asked for; {spec.vm.hypervisor_type} VMs take at most {limit}")

    async def disks(self, spec: VmInstanceSpec) -> None:
        """``zstack_vm_domain_devices``: the VM's Ready volumes, root first, by device number;
        and the cached ISO as a cdrom for a VM made from one."""
        volumes = [v for v in await self.s.vm_volumes(spec.vm.uuid) if v.status == "Ready"]
        for vol in volumes:
            ps = await self.ps_of(spec, vol.primary_storage_uuid or "")
            spec.disks.append(self.s.factory(ps.type).disk_to(vol))
        root = next((v for v in volumes if v.type == "Root"), None)
        if root is None or not root.root_image_uuid:
            return
        if spec.image is not None and spec.image.uuid == root.root_image_uuid and spec.image.media_type != "ISO":
            return  # the create read the image: not an ISO, so no cdrom (and no query for its cache)
        C = ImageCacheVO

        def iso_cache() -> ImageCacheVO | None:
            image = ImageVO.get_or_none(ImageVO.uuid == root.root_image_uuid)
            if image is None or image.media_type != "ISO":
                return None
            return C.get_or_none((C.image_uuid == image.uuid) & (C.primary_storage_uuid == root.primary_storage_uuid)
                                 & (C.host_uuid == root.host_uuid) & (C.status == "Ready"))

        cache = await self.s.node.db.run(iso_cache)
        if cache is not None:
            spec.disks.append(DiskTO(volume_uuid=f"iso-{cache.image_uuid}", path=cache.install_path or "", format="raw",
                                     device_id=len(volumes), bus="sata", device="cdrom", read_only=True))

    async def release(self, spec: VmInstanceSpec, reason: str) -> None:
        """``zstack_vm_release_resource``: a failed create loses all its volumes; an expunged VM
        loses its root volume and leaves its data volumes detached (as ZStack does)."""
        volumes = await self.s.vm_volumes(spec.vm.uuid)
        if reason == "expunge":
            data = [v.uuid for v in volumes if v.type == "Data"]
            if data:
                await self.s.node.db.atomic(lambda: VolumeVO.update(
                    vm_instance_uuid=None, device_id=None, last_vm_instance_uuid=spec.vm.uuid).where(
                    VolumeVO.uuid.in_(data)).execute())
            volumes = [v for v in volumes if v.type == "Root"]
        await self.s.release([v.uuid for v in volumes])


class AllocatePrimaryStorageFlow(Flow):
    """Reserve capacity for the VM's volumes on a primary storage of the destination host."""

    name = "storage-allocate-primary-storage"

    async def run(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        service = _service(data)
        plan = await VmVolumes(service).plan(spec)
        if not plan:
            return
        if spec.destination_host is None:
            raise SysErrors.exc("1000", "vm-create reached storage without a destination host")
        data[_PLAN] = [v.uuid for v in plan]
        data[_WRITTEN] = {}
        data[_PS] = await service.allocate(spec.destination_host, plan, created=data[_WRITTEN])

    async def rollback(self, data: dict[str, Any]) -> None:
        await _service(data).release(data.get(_PLAN, []))


class AllocateVolumeFlow(Flow):
    """Cache the image in the host's pool and create the volumes there."""

    name = "storage-allocate-volume"

    async def run(self, data: dict[str, Any]) -> None:
        spec: VmInstanceSpec = data["spec"]
        if not data.get(_PLAN):
            return
        service = _service(data)
        assert spec.destination_host is not None
        volumes = VmVolumes(service)
        image = await volumes.image_of(spec)
        ps = await volumes.ps_of(spec, data[_PS])
        made = await service.instantiate(data[_PS], spec.destination_host, data[_PLAN], image, ps=ps,
                                         known=data.get(_WRITTEN))
        roots = [v for v in made if v.type == "Root"]
        spec.root_volume = roots[0] if roots else None
        spec.data_volumes = [v for v in made if v.type == "Data"]

    async def rollback(self, data: dict[str, Any]) -> None:
        await _service(data).release(data.get(_PLAN, []))


_PREPARED_IN = 8
"""Up to this many candidate hosts (and clusters), the filter's queries are compiled once per
count (an ``IN`` list has one parameter per value); more are composed each time."""
_SHARES: dict[tuple[int, int], Prepared] = {}
_CACHED: dict[int, Prepared] = {}


def _shares_query(p: Any, n_hosts: int, n_clusters: int) -> Any:
    P, H, R = PrimaryStorageVO, LocalStorageHostRefVO, PrimaryStorageClusterRefVO
    return (H.select(H.host_uuid, H.primary_storage_uuid, H.available_capacity, R.cluster_uuid)
            .join(P, on=(P.uuid == H.primary_storage_uuid))
            .join(R, on=(R.primary_storage_uuid == P.uuid))
            .where(H.host_uuid.in_([getattr(p, f"h{i}") for i in range(n_hosts)]) & (P.state == p.enabled)
                   & (P.status == p.connected) & R.cluster_uuid.in_([getattr(p, f"c{i}") for i in range(n_clusters)])))


def _cached_query(p: Any, n_hosts: int) -> Any:
    C = ImageCacheVO
    return (C.select(C.primary_storage_uuid, C.host_uuid)
            .where((C.image_uuid == p.image) & C.host_uuid.in_([getattr(p, f"h{i}") for i in range(n_hosts)])))


class _Values:
    """Stands in for the markers when a query is composed with its values (too many to compile)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self._params = params

    def __getattr__(self, name: str) -> Any:
        return self._params[name]


def _shares(hosts: list[str], clusters: list[str]) -> list[tuple[str, str, int, str]]:
    """(host, primary storage, available, cluster attached) of enabled, connected primary
    storage on ``hosts`` attached to ``clusters`` (database thread)."""
    params: dict[str, Any] = {f"h{i}": h for i, h in enumerate(hosts)}
    params.update({f"c{i}": c for i, c in enumerate(clusters)}, enabled="Enabled", connected="Connected")
    key = (len(hosts), len(clusters))
    if max(key) > _PREPARED_IN:
        return list(_shares_query(_Values(params), *key).tuples())
    prepared = _SHARES.get(key)
    if prepared is None:
        prepared = _SHARES[key] = Prepared(lambda p: _shares_query(p, *key))
    return [tuple(r) for r in prepared.run(**params).fetchall()]  # type: ignore[misc]


def _cached(image_uuid: str, hosts: list[str]) -> list[tuple[str, str]]:
    """(primary storage, host) pools of ``hosts`` that cache the image (database thread)."""
    params: dict[str, Any] = {f"h{i}": h for i, h in enumerate(hosts)}
    params["image"] = image_uuid
    if len(hosts) > _PREPARED_IN:
        return list(_cached_query(_Values(params), len(hosts)).tuples())
    prepared = _CACHED.get(len(hosts))
    if prepared is None:
        prepared = _CACHED[len(hosts)] = Prepared(lambda p: _cached_query(p, len(hosts)))
    return [tuple(r) for r in prepared.run(**params).fetchall()]  # type: ignore[misc]


class PrimaryStorageAllocatorFilter(HostAllocatorFilter):
    """Keeps hosts whose cluster has a usable primary storage with room, on that host, for the
    VM's volumes (and for the image cache, where the image is not cached there yet)."""

    name = "PrimaryStorageAllocatorFilter"

    def __init__(self) -> None:
        self.service: StorageService | None = None

    async def filter(self, candidates: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        if self.service is None or not candidates:
            return candidates
        s = self.service
        plan = await VmVolumes(s).plan(spec)
        if not plan:
            return candidates
        need = sum(v.size for v in plan)
        image = await VmVolumes(s).image_of(spec)
        by_uuid = {h.uuid: h for h in candidates}
        hosts, clusters = list(by_uuid), sorted({h.cluster_uuid for h in candidates})

        def room() -> set[str]:
            # Two queries whatever the number of candidates: the (host, primary storage) shares
            # of enabled, connected primary storage with the clusters it is attached to, and
            # which of those pools already cache the image.
            found: list[tuple[str, str, int, str]] = _shares(hosts, clusters)
            cached: set[tuple[str, str]] = set()
            if image is not None and found:
                cached = set(_cached(image.uuid, hosts))
            ok = set()
            for host_uuid, ps_uuid, available, cluster_uuid in found:
                host = by_uuid[host_uuid]
                if cluster_uuid != host.cluster_uuid:
                    continue  # attached to another cluster, not this host's
                extra = image.actual_size if image is not None and (ps_uuid, host_uuid) not in cached else 0
                if available - s.hold_back(ps_uuid) >= need + extra:
                    ok.add(host_uuid)
            return ok

        fits = await s.node.db.run(room)
        kept = [h for h in candidates if h.uuid in fits]
        if not kept:
            raise PrimaryStorageErrors.exc("1001", f"none of {len(candidates)} candidate hosts has {need} bytes of "
                                                   "primary storage for the VM's volumes", needed=need)
        return kept

