"""Local storage's libvirt operations, called with a connection as compute's host thread does:
on libvirt's test driver (what it supports) and on a real libvirtd (files, uploads, backing
chains, resize, qcow2 snapshots)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from zstack_core import ZStackError
from zstack_storage import local_storage as ls

from .conftest import qemu_img

libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions; keep stderr clean


@pytest.fixture
def test_conn() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture
def real_conn(libvirtd: str) -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(libvirtd)
    yield conn
    conn.close()


@pytest.fixture
def pool_dir() -> Iterator[Path]:
    path = Path("/var/lib/zstack-test") / uuid.uuid4().hex
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_pool_lifecycle_on_the_test_driver(test_conn: libvirt.virConnect) -> None:
    name, path = f"zs-{uuid.uuid4().hex[:8]}", f"/var/lib/zstack-test/{uuid.uuid4().hex}"
    cap = ls.ensure_pool(test_conn, name, path)
    pool = test_conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart()
    assert cap.total > 0 and 0 < cap.available <= cap.total
    assert ls.ensure_pool(test_conn, name, path) == cap  # idempotent: every reconnect calls it
    with pytest.raises(ZStackError) as info:
        ls.ensure_pool(test_conn, name, "/somewhere/else")
    assert info.value.code == "PS.1002" and "/somewhere/else" in info.value.error.details
    ls.delete_pool(test_conn, name)
    ls.delete_pool(test_conn, name)  # idempotent
    assert name not in test_conn.listStoragePools() + test_conn.listDefinedStoragePools()


def test_volumes_on_the_test_driver(test_conn: libvirt.virConnect, tmp_path: Path) -> None:
    name = f"zs-{uuid.uuid4().hex[:8]}"
    ls.ensure_pool(test_conn, name, f"/var/lib/zstack-test/{uuid.uuid4().hex}")
    try:
        source = tmp_path / "img.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(source), "8M")
        cache = ls.upload_volume(test_conn, name, "image-1.qcow2", str(source), "qcow2", 8 << 20)
        assert cache.size == 8 << 20 and cache.format == "qcow2"  # created empty: no upload on the test driver
        root = ls.create_volume(test_conn, name, "root-1.qcow2", 16 << 20, "qcow2", cache)
        assert root.size == 16 << 20
        xml = test_conn.storageVolLookupByPath(root.install_path).XMLDesc(0)
        assert f"<path>{cache.install_path}</path>" in xml  # the backing store is recorded
        with pytest.raises(ZStackError) as info:
            ls.resize_volume(test_conn, root.install_path, 32 << 20)
        assert info.value.code == "VOLUME.1004"  # the test driver cannot resize: said clearly
        with pytest.raises(ZStackError) as info:
            ls.snapshot_volume(test_conn, root.install_path, "create", "s1")
        assert info.value.code == "VOLUME.1004"
        ls.delete_volume(test_conn, root.install_path)
        ls.delete_volume(test_conn, root.install_path)  # idempotent
        ls.delete_volume(test_conn, cache.install_path)
        assert test_conn.storagePoolLookupByName(name).listVolumes() == []
    finally:
        ls.delete_pool(test_conn, name)



def chain(path: str) -> list[dict[str, object]]:
    return json.loads(qemu_img("info", "-U", "--backing-chain", "--output=json", path))  # type: ignore[no-any-return]


def qemu_io(path: str, command: str) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, path], capture_output=True, check=True)


def holds(path: str, pattern: int, length: str = "64k") -> bool:
    """Whether the first ``length`` bytes of the qcow2 at ``path`` all read as ``pattern``."""
    result = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} 0 {length}", path],
                            capture_output=True, text=True)
    return result.returncode == 0 and "verification failed" not in result.stdout.lower()


@pytest.mark.libvirtd
def test_real_pool_upload_backing_chain_resize_and_snapshots(real_conn: libvirt.virConnect, pool_dir: Path,
                                                             tmp_path: Path) -> None:
    name = f"zs-t{uuid.uuid4().hex[:6]}"
    cap = ls.ensure_pool(real_conn, name, str(pool_dir))
    try:
        assert pool_dir.is_dir() and cap.total > 0
        source = tmp_path / "img.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(source), "8M")
        qemu_io(str(source), "write -P 0x11 0 64k")
        cache = ls.upload_volume(real_conn, name, "image-1.qcow2", str(source), "qcow2", 8 << 20)
        assert Path(cache.install_path).read_bytes() == source.read_bytes()  # byte-identical copy

        root = ls.create_volume(real_conn, name, "root-1.qcow2", 16 << 20, "qcow2", cache)
        links = chain(root.install_path)
        assert [c["filename"] for c in links] == [root.install_path, cache.install_path]
        assert links[0]["virtual-size"] == 16 << 20 and links[0]["format"] == "qcow2"
        assert holds(root.install_path, 0x11)  # the image's data shows through the overlay

        grown = ls.resize_volume(real_conn, root.install_path, 32 << 20)
        assert grown.size == 32 << 20 and chain(root.install_path)[0]["virtual-size"] == 32 << 20

        # A snapshot keeps the state: overwrite after it, revert, and the old data is back.
        qemu_io(root.install_path, "write -P 0xaa 0 64k")
        ls.snapshot_volume(real_conn, root.install_path, "create", "s1")
        qemu_io(root.install_path, "write -P 0xbb 0 64k")
        assert holds(root.install_path, 0xbb) and not holds(root.install_path, 0xaa)
        ls.snapshot_volume(real_conn, root.install_path, "revert", "s1")
        assert holds(root.install_path, 0xaa)
        ls.snapshot_volume(real_conn, root.install_path, "delete", "s1")
        assert "snapshots" not in chain(root.install_path)[0]

        ls.delete_volume(real_conn, root.install_path)
        ls.delete_volume(real_conn, cache.install_path)
        assert sorted(p.name for p in pool_dir.iterdir()) == []
    finally:
        ls.delete_pool(real_conn, name)
    assert not pool_dir.exists()  # an emptied pool takes its directory along
