"""Capacity accounting of local primary storage (database thread only).

Local storage capacity is per host (ZStack's ``LocalStorageHostRefVO``); the primary storage row
carries the sums. Every change is a relative ``UPDATE`` made inside the caller's transaction,
together with the row (volume or image cache) that holds the capacity, so that on every
(primary storage, host)::

    total_capacity - available_capacity == sum of the sizes of its volumes and image caches

A reservation only succeeds when ``available_capacity`` stays at or above the hold-back
(``primaryStorage/reservedCapacity``), and a ``CHECK`` refuses any negative value outright.
"""

from __future__ import annotations

import peewee

from .models import ImageCacheVO, LocalStorageHostRefVO, PrimaryStorageVO, VolumeVO
from zstack_core.prepared import Prepared

__all__ = [
    "ALLOCATED_STATUSES",
    "allocated_sync",
    "drop_cache_sync",
    "remove_host_sync",
    "reserve_sync",
    "return_sync",
    "set_host_capacity_sync",
]

ALLOCATED_STATUSES = ("Creating", "Ready", "Deleted")
"""Volume statuses that hold capacity (a ``NotInstantiated`` volume holds none)."""

H = LocalStorageHostRefVO
P = PrimaryStorageVO

# Every VM create reserves: compiled once (see .prepared).
_TAKE_HOST = Prepared(lambda p: H.update(available_capacity=H.available_capacity - p.size_int)
                      .where((H.primary_storage_uuid == p.ps) & (H.host_uuid == p.host)
                             & (H.available_capacity >= p.needed_int)))
_TAKE_PS = Prepared(lambda p: P.update(available_capacity=P.available_capacity - p.size_int).where(P.uuid == p.ps))


def reserve_sync(ps_uuid: str, host_uuid: str, size: int, hold_back: int = 0) -> bool:
    """Take ``size`` bytes on the host; False (nothing changed) when it does not have them."""
    if size < 0:
        raise ValueError(f"cannot reserve a negative size {size}")
    taken = _TAKE_HOST.run(size_int=size, ps=ps_uuid, host=host_uuid, needed_int=size + hold_back).rowcount
    if taken != 1:
        return False
    _TAKE_PS.run(size_int=size, ps=ps_uuid)
    return True


def return_sync(ps_uuid: str, host_uuid: str, size: int) -> None:
    """Give back ``size`` bytes taken by :func:`reserve_sync`. Call it in the transaction that
    deletes (or shrinks) the row that held them, so it happens exactly once."""
    given = (H.update(available_capacity=H.available_capacity + size)
             .where((H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid))
             .execute())
    if given == 1:  # no host ref: the host is gone and took its capacity with it
        P.update(available_capacity=P.available_capacity + size).where(P.uuid == ps_uuid).execute()


def drop_cache_sync(cache_id: int) -> None:
    """Forget an image cache and return the capacity it held."""
    cache = ImageCacheVO.get_or_none(ImageCacheVO.id == cache_id)
    if cache is not None and ImageCacheVO.delete().where(ImageCacheVO.id == cache_id).execute() == 1:
        return_sync(cache.primary_storage_uuid, cache.host_uuid, cache.size)


def allocated_sync(ps_uuid: str, host_uuid: str) -> int:
    """Bytes held on the host by volumes and image caches."""
    volumes = (VolumeVO.select(peewee.fn.COALESCE(peewee.fn.SUM(VolumeVO.size), 0))
               .where((VolumeVO.primary_storage_uuid == ps_uuid) & (VolumeVO.host_uuid == host_uuid)
                      & VolumeVO.status.in_(ALLOCATED_STATUSES)).scalar())
    caches = (ImageCacheVO.select(peewee.fn.COALESCE(peewee.fn.SUM(ImageCacheVO.size), 0))
              .where((ImageCacheVO.primary_storage_uuid == ps_uuid) & (ImageCacheVO.host_uuid == host_uuid))
              .scalar())
    return int(volumes or 0) + int(caches or 0)


def _refresh_physical_sync(ps_uuid: str) -> None:
    sums = (H.select(peewee.fn.COALESCE(peewee.fn.SUM(H.total_physical_capacity), 0),
                     peewee.fn.COALESCE(peewee.fn.SUM(H.available_physical_capacity), 0))
            .where(H.primary_storage_uuid == ps_uuid).scalar(as_tuple=True))
    P.update(total_physical_capacity=int(sums[0]), available_physical_capacity=int(sums[1])).where(
        P.uuid == ps_uuid).execute()


def set_host_capacity_sync(ps_uuid: str, host_uuid: str, total: int, available_physical: int) -> None:
    """Record what the host reports for the primary storage (on attach and every reconnect).

    A new host starts with ``total`` minus what is already placed there; a known one keeps its
    reservations and moves by the change of ``total`` (a grown disk adds what it grew by).
    """
    ref = H.get_or_none((H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid))
    if ref is None:
        available = max(0, total - allocated_sync(ps_uuid, host_uuid))
        try:
            # A savepoint: another management node may be recording the same host right now
            # (its owner reconnecting it while this node attaches the storage); then update.
            with H._meta.database.atomic():
                H.insert(primary_storage_uuid=ps_uuid, host_uuid=host_uuid, total_capacity=total,
                         available_capacity=available, total_physical_capacity=total,
                         available_physical_capacity=available_physical).execute()
        except peewee.IntegrityError:
            ref = H.get((H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid))
        else:
            P.update(total_capacity=P.total_capacity + total,
                     available_capacity=P.available_capacity + available).where(P.uuid == ps_uuid).execute()
    if ref is not None:
        delta = total - ref.total_capacity
        moved = (H.update(total_capacity=total, available_capacity=H.available_capacity + delta)
                 .where((H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid)
                        & (H.available_capacity + delta >= 0))
                 .execute())
        if moved == 1 and delta:
            P.update(total_capacity=P.total_capacity + delta,
                     available_capacity=P.available_capacity + delta).where(P.uuid == ps_uuid).execute()
        H.update(total_physical_capacity=total, available_physical_capacity=available_physical).where(
            (H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid)).execute()
    _refresh_physical_sync(ps_uuid)


def remove_host_sync(ps_uuid: str, host_uuid: str) -> None:
    """The primary storage no longer reaches the host: its capacity leaves the sums."""
    ref = H.get_or_none((H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid))
    if ref is None:
        return
    H.delete().where((H.primary_storage_uuid == ps_uuid) & (H.host_uuid == host_uuid)).execute()
    P.update(total_capacity=P.total_capacity - ref.total_capacity,
             available_capacity=P.available_capacity - ref.available_capacity).where(P.uuid == ps_uuid).execute()
    _refresh_physical_sync(ps_uuid)
