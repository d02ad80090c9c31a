"""End to end on a real libvirtd + QEMU (``qemu:///system``), compute and storage as installed:
an image added over http from 127.0.0.1, a VM whose root volume is a real qcow2 overlay of the
cached image in a ``dir`` pool, a data volume hot-plugged into the running VM, a live resize, a
snapshot reverted, and everything gone again after expunge and detach."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import ManagementNode, ZStackError

from .conftest import HttpServer
from .test_image import add_image

pytestmark = pytest.mark.libvirtd

MiB = 1 << 20


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def virsh(uri: str, *args: str) -> str:
    return run("virsh", "-c", uri, *args)


def backing_chain(path: str) -> list[dict[str, Any]]:
    return json.loads(run("qemu-img", "info", "-U", "--backing-chain", "--output=json", path))  # type: ignore[no-any-return]


def holds(path: str, pattern: int) -> bool:
    result = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} 0 64k", path],
                            capture_output=True, text=True)
    return result.returncode == 0 and "verification failed" not in result.stdout.lower()


@pytest.fixture
def pool_dir(libvirtd: str) -> Any:
    """A fresh directory for the pool; afterwards any pool still defined on it goes too (a
    failed test must not leave pools on the shared libvirtd)."""
    path = Path("/var/lib/zstack-test") / uuid.uuid4().hex
    yield path
    for name in virsh(libvirtd, "pool-list", "--all", "--name").split():
        if f"<path>{path}</path>" in virsh(libvirtd, "pool-dumpxml", name):
            subprocess.run(["virsh", "-c", libvirtd, "pool-destroy", name], capture_output=True)
            subprocess.run(["virsh", "-c", libvirtd, "pool-undefine", name], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def node(libvirtd: str, data_dir: Path) -> AsyncIterator[ManagementNode]:
    async with ManagementNode(data_dir=data_dir) as n:
        if "CreateVmInstance" not in n.api.registrations:  # until zstack-kvm's VM service lands
            pytest.skip("zstack-kvm does not serve CreateVmInstance yet")
        yield n


@attrs.define
class Setup:
    node: ManagementNode
    uri: str
    pool_dir: Path
    image: str
    zone: str = ""
    cluster: str = ""
    ps: str = ""

    @property
    def pool(self) -> str:
        return f"zs-{self.ps[:8]}"


@pytest.fixture
async def setup(node: ManagementNode, libvirtd: str, pool_dir: Path, http_server: HttpServer,
                qcow2_image: Path) -> AsyncIterator[Setup]:
    """An image added over http (a wrong checksum refused first), a zone with one real host and
    local storage in a fresh directory; afterwards every VM expunged and the storage detached."""
    call = node.api_call
    data = qcow2_image.read_bytes()
    url = http_server.serve("/images/tiny.qcow2", data)
    bad = await add_image(node, name="bad", url=url, format="qcow2", sha256sum="0" * 64)
    assert bad.error is not None and bad.error.code == "IMAGE.1002"
    job = await add_image(node, name="tiny", url=url, format="qcow2", sha256sum=hashlib.sha256(data).hexdigest())
    assert job.state == "Succeeded", job.error
    s = Setup(node=node, uri=libvirtd, pool_dir=pool_dir, image=job.result["inventory"]["uuid"])  # type: ignore[index]
    s.zone = (await call("CreateZone", name="z")).inventory.uuid
    s.cluster = (await call("CreateCluster", name="c", zoneUuid=s.zone)).inventory.uuid
    await call("AddKVMHost", name="local", clusterUuid=s.cluster, url=libvirtd)
    s.ps = (await call("AddLocalPrimaryStorage", name="ls", zoneUuid=s.zone, url=str(pool_dir))).inventory.uuid
    await call("AttachPrimaryStorageToCluster", primaryStorageUuid=s.ps, clusterUuid=s.cluster)
    assert s.pool in virsh(libvirtd, "pool-list", "--name") and pool_dir.is_dir()
    yield s
    for vm in await node.query.find("VmInstance"):
        for api in ("DestroyVmInstance", "ExpungeVmInstance"):
            try:
                await call(api, uuid=vm.uuid)
            except ZStackError:
                pass
    for vol in await node.query.find("Volume"):
        for api in ("DeleteDataVolume", "ExpungeDataVolume"):
            try:
                await call(api, uuid=vol.uuid)
            except ZStackError:
                pass
    await call("DetachPrimaryStorageFromCluster", primaryStorageUuid=s.ps, clusterUuid=s.cluster)
    after = (await node.query.find("PrimaryStorage"))[0]
    assert (after.total_capacity, after.available_capacity) == (0, 0)
    assert s.pool not in virsh(libvirtd, "pool-list", "--all", "--name")
    assert not pool_dir.exists()  # the emptied pool took its directory along
    await call("DeletePrimaryStorage", uuid=s.ps)


async def test_root_volume_resize_snapshot_and_expunge_on_real_libvirt(setup: Setup) -> None:
    call, image = setup.node.api_call, setup.image
    vm = (await call("CreateVmInstance", name="e2e", cpuNum=1, memorySize=64 * MiB, imageUuid=image,
                     rootDiskSize=32 * MiB, dataDiskSizes=[8 * MiB], strategy="CreateStopped")).inventory
    root, data = sorted(await setup.node.query.find("Volume", [("vmInstanceUuid", "=", vm.uuid)]),
                        key=lambda v: v.device_id)
    cache = str(setup.pool_dir / f"image-{image}.qcow2")
    chain = backing_chain(root.install_path)
    assert [c["filename"] for c in chain] == [root.install_path, cache]  # a real overlay of the cached image
    assert chain[0]["format"] == "qcow2" and chain[0]["virtual-size"] == 32 * MiB
    assert holds(root.install_path, 0x5a)  # the image's data, read through the overlay
    listed = virsh(setup.uri, "vol-list", setup.pool)
    assert all(Path(p).name in listed for p in (root.install_path, data.install_path, cache))

    await call("ResizeRootVolume", uuid=root.uuid, size=64 * MiB)
    assert backing_chain(root.install_path)[0]["virtual-size"] == 64 * MiB
    with pytest.raises(ZStackError) as info:
        await call("ResizeRootVolume", uuid=root.uuid, size=48 * MiB)
    assert info.value.code == "VOLUME.1000"  # volumes only grow

    # A snapshot keeps the state: overwrite the disk after it, revert, and the old data is back.
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 64k", root.install_path)
    snap = (await call("CreateVolumeSnapshot", volumeUuid=root.uuid, name="before")).inventory
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 0 64k", root.install_path)
    assert holds(root.install_path, 0xbb)
    await call("RevertVolumeFromSnapshot", uuid=snap.uuid)
    assert holds(root.install_path, 0xaa)
    assert [s["name"] for s in backing_chain(root.install_path)[0]["snapshots"]] == [snap.uuid]
    await call("DeleteVolumeSnapshot", uuid=snap.uuid)
    assert "snapshots" not in backing_chain(root.install_path)[0]

    await call("DestroyVmInstance", uuid=vm.uuid)
    await call("ExpungeVmInstance", uuid=vm.uuid)
    assert not Path(root.install_path).exists()
    assert Path(root.install_path).name not in virsh(setup.uri, "vol-list", setup.pool)
    [left] = await setup.node.query.find("Volume")  # the data volume stays, detached
    assert left.uuid == data.uuid and left.vm_instance_uuid is None
    await call("DeleteDataVolume", uuid=data.uuid)
    await call("ExpungeDataVolume", uuid=data.uuid)
    assert sorted(p.name for p in setup.pool_dir.iterdir()) == [f"image-{image}.qcow2"]


async def test_hot_plug_and_live_resize_on_real_libvirt(setup: Setup) -> None:
    call = setup.node.api_call
    try:
        vm = (await call("CreateVmInstance", name="live", cpuNum=1, memorySize=64 * MiB, imageUuid=setup.image,
                         rootDiskSize=32 * MiB)).inventory
    except ZStackError as exc:
        if "failed to set MSR" in str(exc.error):
            pytest.skip("zstack-kvm defines guests with <cpu mode='host-passthrough'/>, which QEMU cannot start "
                        f"on this machine's KVM: {exc.error.root_cause().details[:160]}")
        raise
    assert vm.state == "Running"
    [root] = await setup.node.query.find("Volume", [("vmInstanceUuid", "=", vm.uuid)])
    vol = (await call("CreateDataVolume", name="data", diskSize=16 * MiB)).inventory
    vol = (await call("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)).inventory
    domain = f"zstack-{vm.uuid}"
    blk = virsh(setup.uri, "domblklist", domain)
    assert vol.install_path in blk and root.install_path in blk
    assert f"file='{vol.install_path}'" in virsh(setup.uri, "dumpxml", domain)

    await call("ResizeDataVolume", uuid=vol.uuid, size=48 * MiB)  # blockResize: the guest sees it
    assert backing_chain(vol.install_path)[0]["virtual-size"] == 48 * MiB
    with pytest.raises(ZStackError) as info:
        await call("CreateVolumeSnapshot", volumeUuid=root.uuid, name="running")
    assert info.value.code == "VOLUME.1002"

    # A live unplug of a virtio disk completes only when the guest's OS acknowledges it, and these
    # guests boot nothing; so detach from the stopped VM and see the disk gone when it starts again.
    await call("StopVmInstance", uuid=vm.uuid, type="cold")
    await call("DetachDataVolumeFromVm", uuid=vol.uuid)
    await call("StartVmInstance", uuid=vm.uuid)
    blk = virsh(setup.uri, "domblklist", domain)
    assert vol.install_path not in blk and root.install_path in blk
    await call("DestroyVmInstance", uuid=vm.uuid)
    await call("ExpungeVmInstance", uuid=vm.uuid)
    assert not Path(root.install_path).exists()
