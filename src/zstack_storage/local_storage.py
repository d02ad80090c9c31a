"""Local storage: a libvirt ``dir`` pool on each host, holding qcow2 volumes.

The functions taking ``conn`` run in the host's worker thread (compute's ``HostRunMsg``) with the
host's one libvirt connection; they raise ``ZStackError`` themselves so a libvirt failure reaches
the user as ``PS.1002`` with libvirt's message. :class:`LocalStorageFactory` is the
``LocalStorage`` primary storage type built from them.

libvirt's test driver (``test:///default``) keeps pools and volumes in memory and touches no
files: it cannot upload content or resize, so an image cache there is an empty volume of the
image's size (said in the log), and resize fails with ``VOLUME.1004``.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse
from xml.sax.saxutils import escape

import libvirt

from zstack_core.errors import ZStackError
from zstack_core.header.backends import PrimaryStorageFactory
from zstack_core.header.devices import DiskTO
from zstack_core.header.messages import HostRunMsg
from zstack_core.header.storage import (
    ImageInventory,
    PrimaryStorageInventory,
    StorageCapacity,
    VolumeFacts,
    VolumeInventory,
)
from zstack_core.header.compute import HostInventory

from . import qemu_img
from .errors import PrimaryStorageErrors, VolumeErrors

if TYPE_CHECKING:
    from zstack_core.node import ManagementNode

__all__ = [
    "LocalStorageFactory",
    "create_volume",
    "delete_pool",
    "delete_volume",
    "ensure_pool",
    "pool_name",
    "resize_volume",
    "upload_volume",
]

log = logging.getLogger("zstack.storage.local")

LOCAL_STORAGE = "LocalStorage"
UPLOAD_TIMEOUT = 3600.0
"""Seconds an image upload into a pool may take (the bus default is far shorter)."""


def pool_name(ps_uuid: str) -> str:
    """The libvirt pool of a primary storage on every host: ``zs-<first 8 of its UUID>``."""
    return f"zs-{ps_uuid[:8]}"


def _fail(what: str, exc: libvirt.libvirtError) -> ZStackError:
    if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
        return VolumeErrors.exc("1004", f"{what}: {exc.get_error_message()}")
    return PrimaryStorageErrors.exc("1002", f"{what}: {exc.get_error_message()}")


def is_test_driver(conn: libvirt.virConnect) -> bool:
    return conn.getType() == "TEST"


def _pool(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        raise _fail(f"no storage pool {name} on this host", exc) from None


def ensure_pool(conn: libvirt.virConnect, name: str, path: str) -> StorageCapacity:
    """Define, build, start and autostart the ``dir`` pool ``name`` at ``path`` unless it
    exists; refresh it and report its capacity. A pool this call defined is undefined again if
    it cannot be started, so a failure leaves nothing behind."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise _fail(f"looking up storage pool {name}", exc) from None
        xml = (f"<pool type='dir'><name>{escape(name)}</name>"
               f"<target><path>{escape(path)}</path></target></pool>")
        try:
            pool = conn.storagePoolDefineXML(xml, 0)
        except libvirt.libvirtError as exc2:
            raise _fail(f"defining storage pool {name} at {path}", exc2) from None
        try:
            pool.build(0)
            pool.create(0)
            pool.setAutostart(1)
        except libvirt.libvirtError as exc2:
            try:
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
            except libvirt.libvirtError:
                log.warning("could not undefine storage pool %s after a failed start", name)
            raise _fail(f"starting storage pool {name} at {path}", exc2) from None
    else:
        target = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
        if target is not None and os.path.normpath(target) != os.path.normpath(path):
            raise PrimaryStorageErrors.exc("1002", f"storage pool {name} on this host is at {target}, not {path}")
    try:
        if not pool.isActive():
            pool.create(0)
        pool.refresh(0)
        _state, capacity, _allocation, available = pool.info()
    except libvirt.libvirtError as exc:
        raise _fail(f"starting storage pool {name}", exc) from None
    return StorageCapacity(total=int(capacity), available=int(available))


def delete_pool(conn: libvirt.virConnect, name: str) -> None:
    """Stop and undefine the pool; remove its directory if it is empty. Idempotent."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    try:
        if pool.isActive():
            pool.destroy()
        try:
            pool.delete(0)  # rmdir: only succeeds when nothing is left in it
        except libvirt.libvirtError:
            pass
        pool.undefine()
    except libvirt.libvirtError as exc:
        raise _fail(f"removing storage pool {name}", exc) from None


def _facts(vol: libvirt.virStorageVol, fmt: str) -> VolumeFacts:
    _type, capacity, allocation = vol.info()
    return VolumeFacts(install_path=vol.path(), size=int(capacity), actual_size=int(allocation), format=fmt)


def create_volume(conn: libvirt.virConnect, pool: str, name: str, size: int, fmt: str = "qcow2",
                  backing: VolumeFacts | None = None) -> VolumeFacts:
    """Create volume ``name`` of ``size`` bytes; with ``backing``, a qcow2 overlay on it."""
    backing_xml = ""
    if backing is not None:
        backing_xml = (f"<backingStore><path>{escape(backing.install_path)}</path>"
                       f"<format type='{backing.format}'/></backingStore>")
    xml = (f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{size}</capacity>"
           f"<target><format type='{fmt}'/></target>{backing_xml}</volume>")
    p = _pool(conn, pool)
    try:
        vol = p.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        raise _fail(f"creating volume {name} in pool {pool}", exc) from None
    return _facts(vol, fmt)


def upload_volume(conn: libvirt.virConnect, pool: str, name: str, source_path: str, fmt: str,
                  virtual_size: int) -> VolumeFacts:
    """Create volume ``name`` holding a copy of the local file ``source_path`` (streamed through
    libvirt, so it works for remote hosts too). The volume is made raw and the bytes written
    over it unchanged, so the copy is byte-identical whatever ``fmt`` the file has."""
    size = os.path.getsize(source_path)
    p = _pool(conn, pool)
    try:
        existing = p.storageVolLookupByName(name)
        existing.delete(0)  # a leftover of an interrupted upload: never trust its content
    except libvirt.libvirtError:
        pass
    if is_test_driver(conn):
        log.info("test driver: image cache %s in pool %s is created empty (the test driver cannot upload)", name, pool)
        facts = create_volume(conn, pool, name, virtual_size, "raw")
        return VolumeFacts(install_path=facts.install_path, size=virtual_size, actual_size=size, format=fmt)
    xml = (f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{size}</capacity>"
           f"<allocation unit='bytes'>0</allocation><target><format type='raw'/></target></volume>")
    try:
        vol = p.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        raise _fail(f"creating volume {name} in pool {pool}", exc) from None
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, size, 0)
        with open(source_path, "rb") as f:
            stream.sendAll(lambda _st, nbytes, fh: fh.read(nbytes), f)
        stream.finish()
    except BaseException as exc:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        try:
            vol.delete(0)
        except libvirt.libvirtError:
            log.warning("could not remove the partial upload %s", name)
        if isinstance(exc, libvirt.libvirtError):
            raise _fail(f"uploading {source_path} into pool {pool}", exc) from None
        raise
    p.refresh(0)
    return VolumeFacts(install_path=vol.path(), size=virtual_size, actual_size=size, format=fmt)


def _volume_by_path(conn: libvirt.virConnect, path: str) -> libvirt.virStorageVol | None:
    try:
        return conn.storageVolLookupByPath(path)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise _fail(f"looking up volume {path}", exc) from None


def delete_volume(conn: libvirt.virConnect, path: str) -> None:
    """Delete the volume at ``path``; one that is not there is already deleted."""
    vol = _volume_by_path(conn, path)
    if vol is None:
        return
    try:
        vol.delete(0)
    except libvirt.libvirtError as exc:
        raise _fail(f"deleting volume {path}", exc) from None


def _running_domain_using(conn: libvirt.virConnect, path: str) -> libvirt.virDomain | None:
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            # Gone between the listing and this read (another program's domain, say): it uses
            # no volume any more.
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue
            raise
        if f"'{path}'" in xml or f'"{path}"' in xml:
            return dom
    return None


def resize_volume(conn: libvirt.virConnect, path: str, size: int) -> VolumeFacts:
    """Grow the volume at ``path`` to ``size`` bytes: through the running VM that uses it
    (``blockResize``, the guest sees the new size) or the storage API when none does."""
    vol = _volume_by_path(conn, path)
    if vol is None:
        raise PrimaryStorageErrors.exc("1002", f"volume {path} is not on this host")
    try:
        dom = _running_domain_using(conn, path)
        if dom is not None:
            dom.blockResize(path, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        else:
            vol.resize(size, 0)
        return _facts(vol, "qcow2")
    except libvirt.libvirtError as exc:
        raise _fail(f"resizing volume {path}", exc) from None


def _local_file(conn: libvirt.virConnect, path: str) -> str:
    """``path`` if this machine can open it (the host is this machine), else a clear error."""
    if is_test_driver(conn):
        raise VolumeErrors.exc("1004", "libvirt's test driver keeps no volume files; snapshots need a real host")
    host = urlparse(conn.getURI()).hostname
    if host not in (None, "", "localhost", "127.0.0.1") or not os.path.exists(path):
        raise VolumeErrors.exc("1004", f"volume file {path} is not on this machine; qcow2 snapshots "
                                       "are taken with qemu-img where the file is")
    return path


def snapshot_volume(conn: libvirt.virConnect, path: str, action: str, name: str) -> None:
    qemu_img.snapshot(_local_file(conn, path), action, name)


class LocalStorageFactory(PrimaryStorageFactory):
    """The ``LocalStorage`` type: the PS ``url`` is a directory on every host of its clusters."""

    type = LOCAL_STORAGE

    @staticmethod
    async def _run(node: ManagementNode, host: HostInventory, fn: Any, timeout: float | None = None) -> Any:
        reply = await node.bus.call_ok(HostRunMsg(host_uuid=host.uuid, fn=fn, timeout=timeout))
        return reply.result

    async def attach_to_host(self, node: ManagementNode, ps: PrimaryStorageInventory,
                             host: HostInventory) -> StorageCapacity:
        name = pool_name(ps.uuid)
        return await self._run(node, host, lambda conn: ensure_pool(conn, name, ps.url))  # type: ignore[no-any-return]

    async def detach_from_host(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory) -> None:
        name = pool_name(ps.uuid)
        await self._run(node, host, lambda conn: delete_pool(conn, name))

    async def create_image_cache(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                                 image: ImageInventory, source_path: str) -> VolumeFacts:
        name, pool = f"image-{image.uuid}.{image.format}", pool_name(ps.uuid)

        def upload(conn: libvirt.virConnect) -> VolumeFacts:
            return upload_volume(conn, pool, name, source_path, "raw" if image.format == "iso" else image.format,
                                 image.size)

        return await self._run(node, host, upload, UPLOAD_TIMEOUT)  # type: ignore[no-any-return]

    async def create_volume(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                            volume: VolumeInventory, backing: VolumeFacts | None) -> VolumeFacts:
        name, pool = f"{volume.type.lower()}-{volume.uuid}.qcow2", pool_name(ps.uuid)
        return await self._run(  # type: ignore[no-any-return]
            node, host, lambda conn: create_volume(conn, pool, name, volume.size, "qcow2", backing))

    async def delete_volume(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                            install_path: str) -> None:
        await self._run(node, host, lambda conn: delete_volume(conn, install_path))

    async def resize_volume(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                            volume: VolumeInventory, size: int) -> VolumeFacts:
        path = volume.install_path or ""
        return await self._run(node, host, lambda conn: resize_volume(conn, path, size))  # type: ignore[no-any-return]

    async def snapshot(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                       volume: VolumeInventory, action: str, name: str) -> None:
        path = volume.install_path or ""
        await self._run(node, host, lambda conn: snapshot_volume(conn, path, action, name))

    def disk_to(self, volume: VolumeInventory) -> DiskTO:
        return DiskTO(volume_uuid=volume.uuid, path=volume.install_path or "", format=volume.format,
                      device_id=volume.device_id or 0)
