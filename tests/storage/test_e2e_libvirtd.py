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
def pool_dir() -> Any:
    path = Path("/var/lib/zstack-test") / uuid.uuid4().hex
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def node(libvirtd: str, data_dir: Path) -> AsyncIterator[ManagementNode]:
    async with ManagementNode(data_dir=data_dir) as n:
        if "CreateVmInstance" not in n.api.registrations:  # until zstack-kvm's VM service lands
            pytest.skip("zstack-kvm does not serve CreateVmInstance yet")
        yield n


async def test_volumes_end_to_end_on_real_libvirt(node: ManagementNode, libvirtd: str, pool_dir: Path,
                                                  http_server: HttpServer, qcow2_image: Path) -> None:
    call = node.api_call
    data = qcow2_image.read_bytes()
    url = http_server.serve("/images/tiny.qcow2", data)
    bad = await add_image(node, name="bad", url=url, format="qcow2", sha256sum="0" * 64)
    assert bad.error is not None and bad.error.code == "IMAGE.1002"
    job = await add_image(node, name="tiny", url=url, format="qcow2", sha256sum=hashlib.sha256(data).hexdigest())
    assert job.state == "Succeeded", job.error
    image = job.result["inventory"]["uuid"]  # type: ignore[index]

    zone = (await call("CreateZone", name="z")).inventory.uuid
    cluster = (await call("CreateCluster", name="c", zoneUuid=zone)).inventory.uuid
    host = (await call("AddKVMHost", name="local", clusterUuid=cluster, url=libvirtd)).inventory.uuid
    ps = (await call("AddLocalPrimaryStorage", name="ls", zoneUuid=zone, url=str(pool_dir))).inventory.uuid
    await call("AttachPrimaryStorageToCluster", primaryStorageUuid=ps, clusterUuid=cluster)
    pool = f"zs-{ps[:8]}"
    assert pool in virsh(libvirtd, "pool-list", "--name") and pool_dir.is_dir()
    before = (await node.query.find("PrimaryStorage"))[0].available_capacity
    vm = None
    try:
        vm = (await call("CreateVmInstance", name="e2e", cpuNum=1, memorySize=64 * MiB, imageUuid=image,
                         rootDiskSize=32 * MiB)).inventory
        assert vm.state == "Running"
        [root] = await node.query.find("Volume", [("vmInstanceUuid", "=", vm.uuid)])
        cache = str(pool_dir / f"image-{image}.qcow2")
        chain = backing_chain(root.install_path)
        assert [c["filename"] for c in chain] == [root.install_path, cache]
        assert chain[0]["format"] == "qcow2" and chain[0]["virtual-size"] == 32 * MiB
        assert Path(cache).read_bytes() == data
        listed = virsh(libvirtd, "vol-list", pool)
        assert Path(root.install_path).name in listed and f"image-{image}.qcow2" in listed

        # Hot-plug a data volume into the running VM: libvirt's live XML and domblklist agree.
        vol = (await call("CreateDataVolume", name="data", diskSize=16 * MiB)).inventory
        vol = (await call("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)).inventory
        domain = f"zstack-{vm.uuid}"
        blk = virsh(libvirtd, "domblklist", domain)
        assert vol.install_path in blk and root.install_path in blk
        assert f"file='{vol.install_path}'" in virsh(libvirtd, "dumpxml", domain)

        # Grow it while the VM runs (blockResize): the qcow2's virtual size changes.
        await call("ResizeDataVolume", uuid=vol.uuid, size=48 * MiB)
        assert backing_chain(vol.install_path)[0]["virtual-size"] == 48 * MiB
        with pytest.raises(ZStackError) as info:
            await call("ResizeDataVolume", uuid=vol.uuid, size=16 * MiB)
        assert info.value.code == "VOLUME.1000"  # volumes only grow

        # Snapshots need the VM stopped; one taken, the disk overwritten, the revert brings it back.
        with pytest.raises(ZStackError) as info:
            await call("CreateVolumeSnapshot", volumeUuid=root.uuid, name="running")
        assert info.value.code == "VOLUME.1002"
        await call("StopVmInstance", uuid=vm.uuid, type="cold")
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 0 64k", root.install_path)
        snap = (await call("CreateVolumeSnapshot", volumeUuid=root.uuid, name="before")).inventory
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0xbb 0 64k", root.install_path)
        assert holds(root.install_path, 0xbb)
        await call("RevertVolumeFromSnapshot", uuid=snap.uuid)
        assert holds(root.install_path, 0xaa)
        assert [s["name"] for s in json.loads(run("qemu-img", "info", "--output=json", root.install_path))["snapshots"]] == [snap.uuid]
        await call("DeleteVolumeSnapshot", uuid=snap.uuid)
        assert "snapshots" not in backing_chain(root.install_path)[0]

        await call("DetachDataVolumeFromVm", uuid=vol.uuid)
        await call("DestroyVmInstance", uuid=vm.uuid)
        await call("ExpungeVmInstance", uuid=vm.uuid)
        vm = None
        assert not Path(root.install_path).exists()
        assert Path(root.install_path).name not in virsh(libvirtd, "vol-list", pool)
        await call("DeleteDataVolume", uuid=vol.uuid)
        await call("ExpungeDataVolume", uuid=vol.uuid)
        assert not Path(vol.install_path).exists()
        assert sorted(p.name for p in pool_dir.iterdir()) == [f"image-{image}.qcow2"]
    finally:
        if vm is not None:
            for api in ("DestroyVmInstance", "ExpungeVmInstance"):
                try:
                    await call(api, uuid=vm.uuid)
                except ZStackError:
                    pass
    await call("DetachPrimaryStorageFromCluster", primaryStorageUuid=ps, clusterUuid=cluster)
    after = (await node.query.find("PrimaryStorage"))[0]
    assert (after.total_capacity, after.available_capacity) == (0, 0) and before > 0
    assert pool not in virsh(libvirtd, "pool-list", "--all", "--name")
    assert not pool_dir.exists()  # the emptied pool took its directory along
    await call("DeletePrimaryStorage", uuid=ps)
