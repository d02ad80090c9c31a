"""Primary storage: add, attach to / detach from clusters, reconnect, delete, per-host capacity.

Attaching a primary storage to a cluster realizes it on every connected host of the cluster
(for local storage: a libvirt ``dir`` pool) and records each host's capacity; a host that
connects later gets it through ``zstack_host_connected``. Work on one primary storage is
serialized (``storage-ps-<uuid>``).
"""

from __future__ import annotations

import logging
import os

from zstack_core import handles, invalid_argument
from zstack_core.db import new_uuid
from zstack_core.errors import ZStackError
from zstack_core.header.compute import HostInventory
from zstack_core.header.storage import PrimaryStorageInventory
from zstack_core.ownership import disown_sync, own_sync

from . import capacity
from .api import (
    APIAddLocalPrimaryStorageMsg,
    APIAttachPrimaryStorageToClusterMsg,
    APIDeletePrimaryStorageMsg,
    APIDetachPrimaryStorageFromClusterMsg,
    APIGetLocalStorageHostDiskCapacityMsg,
    APIGetLocalStorageHostDiskCapacityReply,
    APIPrimaryStorageEvent,
    APIReconnectPrimaryStorageMsg,
    LocalStorageHostCapacity,
)
from .base import StorageBase, not_found
from .errors import PrimaryStorageErrors
from .local_storage import LOCAL_STORAGE
from .models import (
    ImageCacheVO,
    ImageVO,
    LocalStorageHostRefVO,
    PrimaryStorageClusterRefVO,
    PrimaryStorageVO,
    VolumeSnapshotVO,
    VolumeVO,
)

log = logging.getLogger("zstack.storage.ps")

Ref = PrimaryStorageClusterRefVO


class PrimaryStorageHandlers(StorageBase):
    """Handlers and host-side realization of primary storage."""

    # -- realization on hosts ------------------------------------------------------------------

    async def realize_on_host(self, ps: PrimaryStorageInventory, host: HostInventory) -> None:
        """Make ``ps`` usable on ``host`` and record the host's capacity for it."""
        cap = await self.factory(ps.type).attach_to_host(self.node, ps, host)
        await self.node.db.atomic(capacity.set_host_capacity_sync, ps.uuid, host.uuid, cap.total, cap.available)

    async def unrealize_on_host(self, ps: PrimaryStorageInventory, host_uuid: str, host: HostInventory | None) -> None:
        """Remove ``ps``'s image caches and pool from a host and its capacity from the sums.
        The host's side is best effort when the host is not connected."""
        caches = await self.node.db.run(lambda: list(ImageCacheVO.select().where(
            (ImageCacheVO.primary_storage_uuid == ps.uuid) & (ImageCacheVO.host_uuid == host_uuid))))
        factory = self.factory(ps.type)
        reachable = host is not None and host.status == "Connected"
        for cache in caches:
            if reachable and cache.install_path:
                assert host is not None
                await factory.delete_volume(self.node, ps, host, cache.install_path)
            await self.node.db.atomic(capacity.drop_cache_sync, cache.id)
        if reachable:
            assert host is not None
            try:
                await factory.detach_from_host(self.node, ps, host)
            except ZStackError as exc:
                log.warning("could not remove primary storage %s from host %s: %s", ps.uuid, host_uuid, exc.error)
        await self.node.db.atomic(capacity.remove_host_sync, ps.uuid, host_uuid)

    async def on_host_connected(self, host: HostInventory) -> None:
        """``zstack_host_connected``: realize every primary storage of the host's cluster."""
        rows = await self.node.db.run(lambda: [r.primary_storage_uuid for r in Ref.select().where(
            Ref.cluster_uuid == host.cluster_uuid)])
        for ps_uuid in rows:
            ps = await self.ps(ps_uuid)
            await self.serial(f"ps-{ps_uuid}", lambda ps=ps: self.realize_on_host(ps, host))  # type: ignore[misc]
        await self.drop_interrupted_caches(host)

    async def drop_interrupted_caches(self, host: HostInventory) -> None:
        """Image caches left ``Creating`` on ``host`` by a node that stopped mid-upload: the
        partial file goes and the capacity it held comes back (the next VM uploads afresh)."""
        C = ImageCacheVO
        left = await self.node.db.run(lambda: list(C.select().where((C.host_uuid == host.uuid)
                                                                   & (C.status == "Creating"))))
        for cache in left:
            key = f"cache-{cache.primary_storage_uuid}-{host.uuid}-{cache.image_uuid}"
            if self.node.tasks.running(f"storage-{key}") or self.node.tasks.pending(f"storage-{key}"):
                continue  # an upload is running now

            async def drop(cache: ImageCacheVO = cache) -> None:
                row = await self.node.db.run(lambda: C.get_or_none((C.id == cache.id) & (C.status == "Creating")))
                if row is None:
                    return
                ps = await self.ps(cache.primary_storage_uuid)
                image = await self.node.db.run(lambda: ImageVO.get_or_none(ImageVO.uuid == cache.image_uuid))
                if ps.type == LOCAL_STORAGE and image is not None:
                    path = cache.install_path or os.path.join(ps.url, f"image-{image.uuid}.{image.format}")
                    await self.factory(ps.type).delete_volume(self.node, ps, host, path)
                await self.node.db.atomic(capacity.drop_cache_sync, cache.id)
                log.warning("image cache of image %s on host %s was left half-uploaded; removed", cache.image_uuid,
                            host.uuid)

            await self.serial(key, drop)

    # -- APIs ----------------------------------------------------------------------------------

    @handles(APIAddLocalPrimaryStorageMsg)
    async def add_local(self, msg: APIAddLocalPrimaryStorageMsg) -> APIPrimaryStorageEvent:
        if not msg.name.strip():
            raise invalid_argument("name cannot be empty", "name")
        url = os.path.normpath(msg.url) if msg.url else ""
        if not os.path.isabs(msg.url) or url == "/" or any(c in msg.url for c in "\n\r\0"):
            raise invalid_argument(f"url must be an absolute directory path on the hosts, not {msg.url!r}", "url")
        if not await self.resource_exists("Zone", msg.zone_uuid):
            raise not_found("zone", msg.zone_uuid, "zoneUuid")
        uuid = new_uuid()

        def add() -> None:
            clash = PrimaryStorageVO.get_or_none((PrimaryStorageVO.zone_uuid == msg.zone_uuid)
                                                 & (PrimaryStorageVO.url == url))
            if clash is not None:
                raise PrimaryStorageErrors.exc("1000", f"primary storage {clash.uuid} already uses {url} in this zone")
            PrimaryStorageVO.create(uuid=uuid, name=msg.name, description=msg.description, zone_uuid=msg.zone_uuid,
                                    type=LOCAL_STORAGE, url=url, state="Enabled", status="Connected")
            own_sync(uuid, "PrimaryStorage", msg.account_uuid)
            self.node.tags.create_sync(uuid, "PrimaryStorage", msg.system_tags)

        await self.node.db.atomic(add)
        return APIPrimaryStorageEvent(inventory=await self.ps(uuid))

    @handles(APIAttachPrimaryStorageToClusterMsg)
    async def attach(self, msg: APIAttachPrimaryStorageToClusterMsg) -> APIPrimaryStorageEvent:
        ps = await self.ps(msg.primary_storage_uuid)
        found = await self._find("Cluster", [("uuid", "=", msg.cluster_uuid)])
        if not found:
            raise not_found("cluster", msg.cluster_uuid, "clusterUuid")
        cluster = found[0]
        if cluster.zone_uuid != ps.zone_uuid:
            raise PrimaryStorageErrors.exc("1000", f"cluster {cluster.uuid} is in zone {cluster.zone_uuid}, "
                                                   f"primary storage {ps.uuid} in zone {ps.zone_uuid}")

        async def attach() -> None:
            def link() -> None:
                if Ref.get_or_none((Ref.primary_storage_uuid == ps.uuid) & (Ref.cluster_uuid == cluster.uuid)):
                    raise PrimaryStorageErrors.exc("1000", f"primary storage {ps.uuid} is already attached to cluster {cluster.uuid}")
                Ref.create(primary_storage_uuid=ps.uuid, cluster_uuid=cluster.uuid)

            await self.node.db.atomic(link)
            done: list[HostInventory] = []
            try:
                for host in await self.hosts_in_clusters([cluster.uuid]):
                    if host.status == "Connected":
                        await self.realize_on_host(ps, host)
                        done.append(host)
            except BaseException:
                for host in done:  # attach is all or nothing
                    await self.unrealize_on_host(ps, host.uuid, host)
                await self.node.db.atomic(lambda: Ref.delete().where(
                    (Ref.primary_storage_uuid == ps.uuid) & (Ref.cluster_uuid == cluster.uuid)).execute())
                raise

        await self.serial(f"ps-{ps.uuid}", attach)
        return APIPrimaryStorageEvent(inventory=await self.ps(ps.uuid))

    async def _host_uuids_of(self, ps_uuid: str, cluster_uuid: str) -> tuple[list[str], dict[str, HostInventory]]:
        """Hosts of ``cluster_uuid`` with a share of ``ps_uuid`` (or that exist in the cluster)."""
        hosts = {h.uuid: h for h in await self.hosts_in_clusters([cluster_uuid])}
        refs = await self.node.db.run(lambda: [r.host_uuid for r in LocalStorageHostRefVO.select().where(
            (LocalStorageHostRefVO.primary_storage_uuid == ps_uuid)
            & LocalStorageHostRefVO.host_uuid.in_(list(hosts) or [""]))])
        return sorted(set(refs) | set(hosts)), hosts

    @handles(APIDetachPrimaryStorageFromClusterMsg)
    async def detach(self, msg: APIDetachPrimaryStorageFromClusterMsg) -> APIPrimaryStorageEvent:
        ps = await self.ps(msg.primary_storage_uuid)

        async def detach() -> None:
            attached = await self.node.db.run(lambda: Ref.get_or_none(
                (Ref.primary_storage_uuid == ps.uuid) & (Ref.cluster_uuid == msg.cluster_uuid)))
            if attached is None:
                raise PrimaryStorageErrors.exc("1000", f"primary storage {ps.uuid} is not attached to cluster {msg.cluster_uuid}")
            host_uuids, hosts = await self._host_uuids_of(ps.uuid, msg.cluster_uuid)
            in_use = await self.node.db.run(lambda: VolumeVO.select().where(
                (VolumeVO.primary_storage_uuid == ps.uuid) & VolumeVO.host_uuid.in_(host_uuids or [""])).count())
            if in_use:
                raise PrimaryStorageErrors.exc("1003", f"{in_use} volumes of primary storage {ps.uuid} are on hosts "
                                                       f"of cluster {msg.cluster_uuid}; delete or expunge them first")
            for host_uuid in host_uuids:
                await self.unrealize_on_host(ps, host_uuid, hosts.get(host_uuid))
            await self.node.db.atomic(lambda: Ref.delete().where(
                (Ref.primary_storage_uuid == ps.uuid) & (Ref.cluster_uuid == msg.cluster_uuid)).execute())

        await self.serial(f"ps-{ps.uuid}", detach)
        return APIPrimaryStorageEvent(inventory=await self.ps(ps.uuid))

    @handles(APIReconnectPrimaryStorageMsg)
    async def reconnect(self, msg: APIReconnectPrimaryStorageMsg) -> APIPrimaryStorageEvent:
        ps = await self.ps(msg.uuid, "uuid")

        async def reconnect() -> None:
            failure: ZStackError | None = None
            for host in await self.hosts_in_clusters(ps.attached_cluster_uuids):
                if host.status != "Connected":
                    continue
                try:
                    await self.realize_on_host(ps, host)
                except ZStackError as exc:
                    failure = failure or exc
            status = "Connected" if failure is None else "Disconnected"
            await self.node.db.atomic(lambda: PrimaryStorageVO.update(status=status).where(
                PrimaryStorageVO.uuid == ps.uuid).execute())
            if failure is not None:
                raise PrimaryStorageErrors.exc("1002", f"primary storage {ps.uuid} could not reach every host",
                                               cause=failure.error)

        await self.serial(f"ps-{ps.uuid}", reconnect)
        return APIPrimaryStorageEvent(inventory=await self.ps(ps.uuid))

    @handles(APIDeletePrimaryStorageMsg)
    async def delete(self, msg: APIDeletePrimaryStorageMsg) -> APIPrimaryStorageEvent:
        ps = await self.ps(msg.uuid, "uuid")

        async def delete() -> None:
            def drop() -> None:
                if Ref.select().where(Ref.primary_storage_uuid == ps.uuid).exists():
                    raise PrimaryStorageErrors.exc("1003", f"primary storage {ps.uuid} is attached to clusters; "
                                                           "detach it first")
                volumes = VolumeVO.select().where(VolumeVO.primary_storage_uuid == ps.uuid).count()
                if volumes:
                    raise PrimaryStorageErrors.exc("1003", f"primary storage {ps.uuid} still holds {volumes} volumes")
                self.drop_primary_storage_sync(ps.uuid)

            await self.node.db.atomic(drop)

        await self.serial(f"ps-{ps.uuid}", delete)
        return APIPrimaryStorageEvent()

    def drop_primary_storage_sync(self, ps_uuid: str) -> None:
        """Forget a primary storage and everything recorded on it (database thread)."""
        volumes = [v.uuid for v in VolumeVO.select(VolumeVO.uuid).where(VolumeVO.primary_storage_uuid == ps_uuid)]
        if volumes:
            VolumeSnapshotVO.delete().where(VolumeSnapshotVO.volume_uuid.in_(volumes)).execute()
            VolumeVO.delete().where(VolumeVO.uuid.in_(volumes)).execute()
            for v in volumes:
                disown_sync(v)
        ImageCacheVO.delete().where(ImageCacheVO.primary_storage_uuid == ps_uuid).execute()
        LocalStorageHostRefVO.delete().where(LocalStorageHostRefVO.primary_storage_uuid == ps_uuid).execute()
        Ref.delete().where(Ref.primary_storage_uuid == ps_uuid).execute()
        PrimaryStorageVO.delete().where(PrimaryStorageVO.uuid == ps_uuid).execute()
        self.node.tags.delete_sync(ps_uuid)
        disown_sync(ps_uuid)

    @handles(APIGetLocalStorageHostDiskCapacityMsg)
    async def host_capacity(self, msg: APIGetLocalStorageHostDiskCapacityMsg) -> APIGetLocalStorageHostDiskCapacityReply:
        await self.ps(msg.primary_storage_uuid)
        H = LocalStorageHostRefVO

        def load() -> list[LocalStorageHostCapacity]:
            q = H.select().where(H.primary_storage_uuid == msg.primary_storage_uuid)
            if msg.host_uuid:
                q = q.where(H.host_uuid == msg.host_uuid)
            return [LocalStorageHostCapacity(host_uuid=r.host_uuid, total_capacity=r.total_capacity,
                                             available_capacity=r.available_capacity,
                                             total_physical_capacity=r.total_physical_capacity,
                                             available_physical_capacity=r.available_physical_capacity)
                    for r in q.order_by(H.host_uuid)]

        return APIGetLocalStorageHostDiskCapacityReply(inventories=await self.node.db.run(load))

    # -- cascade -------------------------------------------------------------------------------

    async def cascade(self, parent_type: str, parent_uuids: list[str], mode: str) -> None:
        """Children of a deleted zone, cluster or host: primary storage, its attachments, and
        (for a host) the volumes and caches its disk held."""
        if mode == "check":
            return
        if parent_type == "Zone":
            ps_uuids = await self.node.db.run(lambda: [p.uuid for p in PrimaryStorageVO.select(PrimaryStorageVO.uuid)
                                                       .where(PrimaryStorageVO.zone_uuid.in_(parent_uuids))])
            for ps_uuid in ps_uuids:
                await self.node.db.atomic(self.drop_primary_storage_sync, ps_uuid)
        elif parent_type == "Cluster":
            for host in await self.hosts_in_clusters(parent_uuids):
                await self._forget_host(host.uuid)
            await self.node.db.atomic(lambda: Ref.delete().where(Ref.cluster_uuid.in_(parent_uuids)).execute())
        elif parent_type == "Host":
            for host_uuid in parent_uuids:
                await self._forget_host(host_uuid)

    async def _forget_host(self, host_uuid: str) -> None:
        def forget() -> None:
            volumes = [v.uuid for v in VolumeVO.select(VolumeVO.uuid).where(VolumeVO.host_uuid == host_uuid)]
            if volumes:
                VolumeSnapshotVO.delete().where(VolumeSnapshotVO.volume_uuid.in_(volumes)).execute()
                VolumeVO.delete().where(VolumeVO.uuid.in_(volumes)).execute()
                for v in volumes:
                    disown_sync(v)
            ImageCacheVO.delete().where(ImageCacheVO.host_uuid == host_uuid).execute()
            for ref in list(LocalStorageHostRefVO.select().where(LocalStorageHostRefVO.host_uuid == host_uuid)):
                capacity.remove_host_sync(ref.primary_storage_uuid, host_uuid)

        await self.node.db.atomic(forget)
