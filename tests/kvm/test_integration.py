"""Compute together with zstack-storage and zstack-network (when they are installed): a VM
created from an image on local primary storage with a NIC on an L3 network gets its root disk
and its interface from those plugins, through the flows they contribute and the
``zstack_vm_domain_devices`` hook, and gives both back when expunged."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from zstack_core import ManagementNode, ZStackError

from .conftest import Cloud, make_cloud, start_node
from .test_vms import domain_xml

MiB = 1 << 20
NEEDED = ("AddLocalPrimaryStorage", "AttachPrimaryStorageToCluster", "AddImage", "CreateL2NoVlanNetwork",
          "AttachL2NetworkToCluster", "CreateL3Network", "AddIpRange")


@pytest.fixture
async def full_node(isolated_env: Path) -> AsyncIterator[ManagementNode]:
    node = await start_node(isolated_env, others=True)
    try:
        missing = [a for a in NEEDED if a not in node.api.registrations]
        if missing:
            pytest.skip(f"zstack-storage/zstack-network are not installed (no {', '.join(missing)})")
        yield node
    finally:
        await node.stop()


async def add_storage(cloud: Cloud, workdir: Path) -> tuple[Any, Any]:
    """Local primary storage in ``workdir`` attached to the cluster, and a 32 MiB qcow2 image."""
    image_file = workdir / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image_file), "32M"], check=True)
    ps = (await cloud.call("AddLocalPrimaryStorage", name="ps", zoneUuid=cloud.zone.uuid,
                           url=str(workdir / "ps"))).inventory
    await cloud.call("AttachPrimaryStorageToCluster", primaryStorageUuid=ps.uuid, clusterUuid=cloud.cluster.uuid)
    return ps, (await cloud.call("AddImage", name="image", url=str(image_file), format="qcow2")).inventory


async def test_vm_with_image_and_l3_network_on_the_test_driver(full_node: ManagementNode, tmp_path: Path) -> None:
    cloud = await make_cloud(full_node)
    _, image = await add_storage(cloud, tmp_path)
    l2 = (await cloud.call("CreateL2NoVlanNetwork", name="l2", zoneUuid=cloud.zone.uuid,
                           physicalInterface="eth0")).inventory
    await cloud.call("AttachL2NetworkToCluster", l2NetworkUuid=l2.uuid, clusterUuid=cloud.cluster.uuid)
    l3 = (await cloud.call("CreateL3Network", name="l3", l2NetworkUuid=l2.uuid)).inventory
    await cloud.call("AddIpRange", l3NetworkUuid=l3.uuid, startIp="10.0.0.10", endIp="10.0.0.20",
                     netmask="255.255.255.0", gateway="10.0.0.1")

    vm = (await cloud.call("CreateVmInstance", name="vm", cpuNum=1, memorySize=64 * MiB, imageUuid=image.uuid,
                           l3NetworkUuids=[l3.uuid])).inventory
    assert vm.state == "Running"
    [nic], [root] = vm.vm_nics, vm.all_volumes
    assert (nic.l3_network_uuid, nic.ip, root.type, root.root_image_uuid) == (l3.uuid, "10.0.0.10", "Root", image.uuid)
    dom = await domain_xml(cloud, vm.uuid)
    assert [(d.target_dev, d.serial) for d in dom.disks] == [("vda", root.uuid)]
    assert [(i.mac, i.type) for i in dom.interfaces] == [(nic.mac, "bridge")]
    queried = (await full_node.query.find("VmInstance", [("uuid", "=", vm.uuid)]))[0]
    assert [n.uuid for n in queried.vm_nics] == [nic.uuid] and [v.uuid for v in queried.all_volumes] == [root.uuid]

    await cloud.call("StopVmInstance", uuid=vm.uuid)
    started = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory  # devices come back at each start
    assert started.state == "Running" and len((await domain_xml(cloud, vm.uuid)).disks) == 1

    # a second L3 network: the test driver cannot hot-plug, so the NIC is refused and released...
    other = (await cloud.call("CreateL3Network", name="l3b", l2NetworkUuid=l2.uuid)).inventory
    await cloud.call("AddIpRange", l3NetworkUuid=other.uuid, startIp="10.0.1.10", endIp="10.0.1.20",
                     netmask="255.255.255.0", gateway="10.0.1.1")
    with pytest.raises(ZStackError) as info:
        await cloud.call("AttachL3NetworkToVm", vmInstanceUuid=vm.uuid, l3NetworkUuid=other.uuid)
    assert info.value.code == "VM.1005"
    assert len(await full_node.query.find("VmNic", [("vmInstanceUuid", "=", vm.uuid)])) == 1
    # ...while a stopped VM gets it, and has it from its next start on
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    attached = await cloud.call("AttachL3NetworkToVm", vmInstanceUuid=vm.uuid, l3NetworkUuid=other.uuid,
                                staticIp="10.0.1.15")
    assert (attached.nic.ip, attached.nic.device_id) == ("10.0.1.15", 1) and len(attached.inventory.vm_nics) == 2
    await cloud.call("StartVmInstance", uuid=vm.uuid)
    assert [i.mac for i in (await domain_xml(cloud, vm.uuid)).interfaces] == [nic.mac, attached.nic.mac]
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    detached = await cloud.call("DetachL3NetworkFromVm", vmNicUuid=attached.nic.uuid)
    assert [n.uuid for n in detached.inventory.vm_nics] == [nic.uuid]
    await cloud.call("DestroyVmInstance", uuid=vm.uuid)
    await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
    assert await full_node.query.find("Volume", [("vmInstanceUuid", "=", vm.uuid)]) == []
    assert await full_node.query.find("VmNic", [("vmInstanceUuid", "=", vm.uuid)]) == []


@pytest.mark.libvirtd
async def test_vm_boots_from_a_root_volume_in_qemu(full_node: ManagementNode, libvirtd: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="zstack-kvm-e2e-"))
    workdir.chmod(0o755)  # QEMU runs as libvirt-qemu and must reach the volumes
    cloud = await make_cloud(full_node, url=libvirtd)
    vm = ps = None
    try:
        ps, image = await add_storage(cloud, workdir)
        vm = (await cloud.call("CreateVmInstance", name="vm", cpuNum=1, memorySize=64 * MiB,
                               imageUuid=image.uuid)).inventory
        [root] = vm.all_volumes
        blk = subprocess.run(["virsh", "-c", libvirtd, "domblklist", f"zstack-{vm.uuid}"], capture_output=True,
                             text=True, check=True).stdout
        assert "vda" in blk and root.install_path in blk
        conn = libvirt.open(libvirtd)
        try:
            assert conn.lookupByName(f"zstack-{vm.uuid}").isActive()
        finally:
            conn.close()
        await cloud.call("DestroyVmInstance", uuid=vm.uuid)
        await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
        vm = None
        assert not Path(root.install_path).exists()
    finally:
        if vm is not None:
            await cloud.call("DestroyVmInstance", uuid=vm.uuid, deleteMode="Enforcing")
        if ps is not None:  # its libvirt pool on the shared libvirtd goes with it
            await cloud.call("DetachPrimaryStorageFromCluster", primaryStorageUuid=ps.uuid,
                             clusterUuid=cloud.cluster.uuid)
            await cloud.call("DeletePrimaryStorage", uuid=ps.uuid)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
