"""What every part of the storage service shares: lookups of its own rows and of compute's
resources (through the generic query, never compute's code), primary storage factories,
capacity hold-back, and per-resource serialization."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from zstack_core import Service, SysErrors
from zstack_core.header.backends import PrimaryStorageFactory
from zstack_core.header.compute import HostInventory, VmInstanceInventory
from zstack_core.header.storage import ImageInventory, PrimaryStorageInventory, VolumeInventory

from .errors import PrimaryStorageErrors
from .models import ImageVO, PrimaryStorageClusterRefVO, PrimaryStorageVO, VolumeVO
from zstack_core.prepared import Prepared

if TYPE_CHECKING:
    from zstack_core.node import ManagementNode

T = TypeVar("T")

# Read by every VM create, compiled once (see .prepared).
_PS = Prepared(lambda p: PrimaryStorageVO.select().where(PrimaryStorageVO.uuid == p.uuid))
_PS_CLUSTERS = Prepared(lambda p: PrimaryStorageClusterRefVO.select(PrimaryStorageClusterRefVO.cluster_uuid)
                        .where(PrimaryStorageClusterRefVO.primary_storage_uuid == p.uuid)
                        .order_by(PrimaryStorageClusterRefVO.created_at))
_IMAGE = Prepared(lambda p: ImageVO.select().where(ImageVO.uuid == p.uuid))

RESERVED_CAPACITY = ("primaryStorage", "reservedCapacity")
"""Global config: bytes every host of a primary storage keeps free (ZStack's
``primaryStorage.reservedCapacity``); overridable per primary storage."""


def not_found(kind: str, uuid: str, field: str | None = None) -> Exception:
    if field:
        return SysErrors.exc("1004", f"no {kind} {uuid}", field=field)
    return SysErrors.exc("1004", f"no {kind} {uuid}")


class StorageBase(Service):
    """The ``storage`` service's shared helpers (handlers live in the mixins)."""

    id = "storage"
    start_order = 30
    node: ManagementNode

    # -- serialization ---------------------------------------------------------------------

    async def serial(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` after other work on ``key`` (``ps-<uuid>``, ``volume-<uuid>``...)."""
        return await self.node.tasks.run(f"storage-{key}", fn)

    # -- primary storage -----------------------------------------------------------------------

    def factory(self, ps_type: str) -> PrimaryStorageFactory:
        for f in self.node.extension("primary_storage_factories"):
            if f.type == ps_type:
                return f  # type: ignore[no-any-return]
        raise PrimaryStorageErrors.exc("1000", f"no plugin provides the primary storage type {ps_type!r}")

    def hold_back(self, ps_uuid: str) -> int:
        return int(self.node.configs.resolve(*RESERVED_CAPACITY, [ps_uuid]))

    async def ps(self, uuid: str, field: str = "primaryStorageUuid") -> PrimaryStorageInventory:
        def load() -> list[PrimaryStorageInventory]:
            rows = _PS.rows(PrimaryStorageVO, uuid=uuid)
            if not rows:
                return []
            # As ps_inventories(rows), for one row: its attached clusters, oldest first.
            clusters = [c for (c,) in _PS_CLUSTERS.run(uuid=uuid).fetchall()]
            return [attrs.evolve(rows[0].to_inventory(), attached_cluster_uuids=clusters)]

        found = await self.node.db.run(load)
        if not found:
            raise not_found("primary storage", uuid, field)
        return found[0]

    # -- own rows ------------------------------------------------------------------------------

    async def volume(self, uuid: str, field: str = "uuid") -> VolumeInventory:
        row = await self.node.db.run(lambda: VolumeVO.get_or_none(VolumeVO.uuid == uuid))
        if row is None:
            raise not_found("volume", uuid, field)
        return row.to_inventory()  # type: ignore[no-any-return]

    async def image(self, uuid: str, field: str = "imageUuid") -> ImageInventory:
        rows = await self.node.db.run(lambda: _IMAGE.rows(ImageVO, uuid=uuid))
        if not rows:
            raise not_found("image", uuid, field)
        return rows[0].to_inventory()  # type: ignore[no-any-return]

    async def image_path(self, uuid: str) -> str:
        row = await self.node.db.run(lambda: ImageVO.get_or_none(ImageVO.uuid == uuid))
        return "" if row is None else (row.install_path or "")

    # -- compute's resources, through the generic query ---------------------------------------

    async def _find(self, resource: str, conditions: list[tuple[str, str, Any]]) -> list[Any]:
        if resource not in self.node.query.resources:
            raise SysErrors.exc("1003", f"no loaded plugin provides {resource} resources (is zstack-kvm installed?)")
        return await self.node.query.find(resource, conditions)

    async def resource_exists(self, resource: str, uuid: str) -> bool:
        return bool(await self._find(resource, [("uuid", "=", uuid)]))

    async def host(self, uuid: str, field: str = "hostUuid") -> HostInventory:
        found = await self._find("Host", [("uuid", "=", uuid)])
        if not found:
            raise not_found("host", uuid, field)
        return found[0]  # type: ignore[no-any-return]

    async def hosts_in_clusters(self, cluster_uuids: list[str]) -> list[HostInventory]:
        if not cluster_uuids:
            return []
        return await self._find("Host", [("clusterUuid", "in", list(cluster_uuids))])

    async def vm(self, uuid: str, field: str = "vmInstanceUuid") -> VmInstanceInventory:
        found = await self._find("VmInstance", [("uuid", "=", uuid)])
        if not found:
            raise not_found("VM instance", uuid, field)
        return found[0]  # type: ignore[no-any-return]
