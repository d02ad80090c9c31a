"""Storage with compute (both plugins as installed) on libvirt's test driver: primary storage on
hosts, root and data volumes of VMs, attach/detach, rollback and expunge, cascades; every
refusal an ErrorCode, and no row, file or byte of capacity left behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import Flow, FlowContribution, ManagementNode, ZStackError, hookimpl
from zstack_core.header.flows import VmCreateFlows
from zstack_core.header.messages import HostRunMsg
from zstack_storage import capacity
from zstack_storage.models import ImageCacheVO, LocalStorageHostRefVO, PrimaryStorageVO, VolumeVO

from .test_image import add_image

MiB, GiB = 1 << 20, 1 << 30


class FailAfterVolumes:
    """A plugin whose vm-create flow fails after storage made the volumes, when armed."""

    def __init__(self) -> None:
        self.armed = False
        plugin = self

        class Boom(Flow):
            name = "test-boom"

            async def run(self, data: dict[str, Any]) -> None:
                if plugin.armed:
                    raise RuntimeError("boom after the volumes were made")

        self.flow = Boom()

    @hookimpl
    def zstack_flows(self) -> list[FlowContribution]:
        return [FlowContribution(chain=VmCreateFlows.CHAIN, flow=self.flow, order=VmCreateFlows.ALLOCATE_VOLUME + 50)]


@attrs.define
class Cloud:
    node: ManagementNode
    zone: str
    cluster: str
    hosts: list[str]
    ps: str
    image: str
    boom: FailAfterVolumes

    async def call(self, api: str, **params: Any) -> Any:
        return await self.node.api_call(api, **params)

    async def refused(self, api: str, **params: Any) -> ZStackError:
        with pytest.raises(ZStackError) as info:
            await self.node.api_call(api, **params)
        return info.value

    async def add_host(self, name: str, cluster: str | None = None) -> str:
        """A host of its own: a private libvirt test driver (``test:///path/driver.xml``)."""
        path = self.node.data_dir / f"{name}-driver.xml"
        path.write_text("<node><cpu><mhz>2000</mhz><model>i686</model><active>8</active><nodes>1</nodes>"
                        "<sockets>1</sockets><cores>8</cores><threads>1</threads></cpu>"
                        f"<memory>{16 << 20}</memory></node>")
        return (await self.call("AddKVMHost", name=name, clusterUuid=cluster or self.cluster,
                                url=f"test://{path}")).inventory.uuid  # type: ignore[no-any-return]

    async def vm(self, name: str = "vm", **params: Any) -> Any:
        params.setdefault("imageUuid", self.image)
        return (await self.call("CreateVmInstance", name=name, cpuNum=1, memorySize=64 * MiB, **params)).inventory

    async def volumes(self, **where: Any) -> list[Any]:
        return await self.node.query.find("Volume", [(k, "=", v) for k, v in where.items()])

    async def pool_volumes(self, host: str) -> list[str]:
        name = f"zs-{self.ps[:8]}"
        reply = await self.node.bus.call_ok(HostRunMsg(host_uuid=host, fn=lambda c: sorted(
            c.storagePoolLookupByName(name).listVolumes())))
        return reply.result  # type: ignore[no-any-return]

    async def books(self) -> dict[str, tuple[int, int, int]]:
        """Per host: (total, available, allocated by rows); checks the invariant on the way."""

        def load() -> dict[str, tuple[int, int, int]]:
            out = {}
            refs = list(LocalStorageHostRefVO.select().where(LocalStorageHostRefVO.primary_storage_uuid == self.ps))
            for r in refs:
                out[r.host_uuid] = (r.total_capacity, r.available_capacity, capacity.allocated_sync(self.ps, r.host_uuid))
            ps = PrimaryStorageVO.get(PrimaryStorageVO.uuid == self.ps)
            assert (ps.total_capacity, ps.available_capacity) == (sum(r.total_capacity for r in refs),
                                                                  sum(r.available_capacity for r in refs))
            return out

        books = await self.node.db.run(load)
        for total, available, allocated in books.values():
            assert total - available == allocated, books
        return books


@pytest.fixture
async def cloud(data_dir: Path, qcow2_image: Path) -> AsyncIterator[Cloud]:
    boom = FailAfterVolumes()
    async with ManagementNode(data_dir=data_dir, plugins=[boom]) as node:
        if "CreateVmInstance" not in node.api.registrations:  # until zstack-kvm's VM service lands
            pytest.skip("zstack-kvm does not serve CreateVmInstance yet")
        zone = (await node.api_call("CreateZone", name="zone")).inventory.uuid
        cluster = (await node.api_call("CreateCluster", name="cluster", zoneUuid=zone)).inventory.uuid
        c = Cloud(node=node, zone=zone, cluster=cluster, hosts=[], ps="", image="", boom=boom)
        c.hosts = [await c.add_host("h1"), await c.add_host("h2")]
        c.ps = (await node.api_call("AddLocalPrimaryStorage", name="local", zoneUuid=zone,
                                    url=f"/var/lib/zstack-test/{data_dir.parent.name}")).inventory.uuid
        await node.api_call("AttachPrimaryStorageToCluster", primaryStorageUuid=c.ps, clusterUuid=cluster)
        c.image = (await add_image(node, name="img", url=str(qcow2_image), format="qcow2")).result["inventory"]["uuid"]  # type: ignore[index]
        yield c
        for vm in await node.query.find("VmInstance"):
            for api in ("DestroyVmInstance", "ExpungeVmInstance"):
                try:
                    await node.api_call(api, uuid=vm.uuid)
                except ZStackError:
                    pass
        for vol in await c.volumes(type="Data"):
            try:
                if vol.vm_instance_uuid is None:
                    await node.api_call("DeleteDataVolume", uuid=vol.uuid)
                await node.api_call("ExpungeDataVolume", uuid=vol.uuid)
            except ZStackError:
                pass
        for ps in await node.query.find("PrimaryStorage"):
            for cl in ps.attached_cluster_uuids:
                await node.api_call("DetachPrimaryStorageFromCluster", primaryStorageUuid=ps.uuid, clusterUuid=cl)


async def test_attach_makes_a_pool_on_every_host_and_counts_each_host(cloud: Cloud) -> None:
    [ps] = await cloud.node.query.find("PrimaryStorage")
    assert ps.attached_cluster_uuids == [cloud.cluster] and ps.type == "LocalStorage"
    books = await cloud.books()
    assert set(books) == set(cloud.hosts)
    assert ps.total_capacity == sum(t for t, _, _ in books.values()) > 0
    for host in cloud.hosts:
        assert await cloud.pool_volumes(host) == []  # the pool exists (the lookup would fail otherwise)
    reply = await cloud.call("GetLocalStorageHostDiskCapacity", primaryStorageUuid=cloud.ps, hostUuid=cloud.hosts[0])
    assert [c.host_uuid for c in reply.inventories] == [cloud.hosts[0]]

    late = await cloud.add_host("h3")  # zstack_host_connected realizes the storage on a new host
    assert late in await cloud.books() and await cloud.pool_volumes(late) == []
    reconnected = (await cloud.call("ReconnectPrimaryStorage", uuid=cloud.ps)).inventory
    assert reconnected.status == "Connected" and reconnected.total_capacity == ps.total_capacity * 3 // 2


async def test_attach_refusals(cloud: Cloud) -> None:
    other_zone = (await cloud.call("CreateZone", name="z2")).inventory.uuid
    other = (await cloud.call("CreateCluster", name="c2", zoneUuid=other_zone)).inventory.uuid
    assert (await cloud.refused("AttachPrimaryStorageToCluster", primaryStorageUuid=cloud.ps,
                                clusterUuid=other)).code == "PS.1000"
    assert (await cloud.refused("AttachPrimaryStorageToCluster", primaryStorageUuid=cloud.ps,
                                clusterUuid=cloud.cluster)).code == "PS.1000"
    assert (await cloud.refused("AttachPrimaryStorageToCluster", primaryStorageUuid=cloud.ps,
                                clusterUuid="0" * 32)).code == "SYS.1004"
    assert (await cloud.refused("AddLocalPrimaryStorage", name="dup", zoneUuid=cloud.zone,
                                url=(await cloud.node.query.find("PrimaryStorage"))[0].url)).code == "PS.1000"
    assert (await cloud.refused("AddLocalPrimaryStorage", name="x", zoneUuid="0" * 32, url="/var/x")).code == "SYS.1004"
    assert (await cloud.refused("DeletePrimaryStorage", uuid=cloud.ps)).code == "PS.1003"  # still attached


async def test_a_vm_gets_a_root_volume_backed_by_the_cached_image_and_its_data_volumes(cloud: Cloud) -> None:
    before = await cloud.books()
    offering = (await cloud.call("CreateDiskOffering", name="o", diskSize=GiB)).inventory.uuid
    vm = await cloud.vm(rootDiskSize=2 * GiB, dataDiskOfferingUuids=[offering], dataDiskSizes=[512 * MiB])
    root, data1, data2 = sorted(await cloud.volumes(vmInstanceUuid=vm.uuid), key=lambda v: v.device_id)
    assert (root.type, root.device_id, root.size, root.status) == ("Root", 0, 2 * GiB, "Ready")
    assert (data1.type, data1.device_id, data1.size, data1.disk_offering_uuid) == ("Data", 1, GiB, offering)
    assert (data2.device_id, data2.size) == (2, 512 * MiB)
    host = root.host_uuid
    assert host == vm.host_uuid and {data1.host_uuid, data2.host_uuid} == {host}
    pool = f"/var/lib/zstack-test/"
    assert root.install_path.startswith(pool) and root.root_image_uuid == cloud.image
    image_size = (await cloud.node.query.find("Image"))[0].actual_size
    assert sorted(await cloud.pool_volumes(host)) == sorted([Path(v.install_path).name for v in (root, data1, data2)]
                                                            + [f"image-{cloud.image}.qcow2"])
    after = await cloud.books()
    assert before[host][1] - after[host][1] == 2 * GiB + GiB + 512 * MiB + image_size

    reply = await cloud.node.bus.call_ok(HostRunMsg(host_uuid=host, fn=lambda c: c.storageVolLookupByPath(
        root.install_path).XMLDesc(0)))
    assert f"image-{cloud.image}.qcow2</path>" in reply.result  # the overlay's backing store is the cache
    xml = await cloud.node.bus.call_ok(HostRunMsg(host_uuid=host, fn=lambda c: c.lookupByName(
        f"zstack-{vm.uuid}").XMLDesc(0)))
    paths = [v.install_path for v in (root, data1, data2)]
    assert [xml.result.index(p) for p in paths] == sorted(xml.result.index(p) for p in paths)  # root first

    second = await cloud.vm("second", hostUuid=host)  # the cache is made once per pool
    assert (await cloud.books())[host][1] == after[host][1] - (await cloud.volumes(vmInstanceUuid=second.uuid))[0].size
    assert await cloud.node.db.run(lambda: ImageCacheVO.select().count()) == 1


async def test_a_failed_create_rolls_its_volumes_back(cloud: Cloud) -> None:
    before = await cloud.books()
    cloud.boom.armed = True
    error = await cloud.refused("CreateVmInstance", name="doomed", cpuNum=1, memorySize=64 * MiB,
                                imageUuid=cloud.image, dataDiskSizes=[GiB])
    assert "boom" in str(error.error)
    assert await cloud.volumes() == []
    after = await cloud.books()
    for host in cloud.hosts:  # the image cache stays (it serves the next VM); every volume is gone
        assert await cloud.pool_volumes(host) in ([], [f"image-{cloud.image}.qcow2"])
        assert after[host][2] in (0, (await cloud.node.query.find("Image"))[0].actual_size)


async def test_no_host_with_room_refuses_the_vm_and_leaks_nothing(cloud: Cloud) -> None:
    before = await cloud.books()
    too_big = max(t for t, _, _ in before.values()) + GiB
    error = await cloud.refused("CreateVmInstance", name="huge", cpuNum=1, memorySize=64 * MiB,
                                imageUuid=cloud.image, rootDiskSize=too_big)
    assert error.error.caused("PS.1001"), error.error
    assert await cloud.volumes() == [] and await cloud.books() == before


async def test_expunge_removes_the_root_volume_and_detaches_data_volumes(cloud: Cloud) -> None:
    vm = await cloud.vm(dataDiskSizes=[GiB])
    root, data = sorted(await cloud.volumes(vmInstanceUuid=vm.uuid), key=lambda v: v.device_id)
    await cloud.call("DestroyVmInstance", uuid=vm.uuid)
    assert len(await cloud.volumes(vmInstanceUuid=vm.uuid)) == 2  # destroyed VMs can be recovered
    await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
    [left] = await cloud.volumes()
    assert (left.uuid, left.vm_instance_uuid, left.last_vm_instance_uuid, left.status) == (data.uuid, None, vm.uuid, "Ready")
    assert Path(root.install_path).name not in await cloud.pool_volumes(root.host_uuid)
    await cloud.call("DeleteDataVolume", uuid=data.uuid)
    await cloud.call("ExpungeDataVolume", uuid=data.uuid)
    assert await cloud.pool_volumes(root.host_uuid) == [f"image-{cloud.image}.qcow2"]
    books = await cloud.books()
    assert books[root.host_uuid][2] == (await cloud.node.query.find("Image"))[0].actual_size


async def test_attach_and_detach_data_volumes(cloud: Cloud) -> None:
    vm = await cloud.vm()
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    vol = (await cloud.call("CreateDataVolume", name="d", diskSize=GiB)).inventory
    before = await cloud.books()
    attached = (await cloud.call("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)).inventory
    root = (await cloud.volumes(type="Root"))[0]
    assert (attached.status, attached.device_id, attached.host_uuid, attached.primary_storage_uuid) == (
        "Ready", 1, root.host_uuid, cloud.ps)
    assert before[root.host_uuid][1] - (await cloud.books())[root.host_uuid][1] == GiB
    assert (await cloud.refused("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)).code == "VOLUME.1005"
    assert (await cloud.refused("DeleteDataVolume", uuid=vol.uuid)).code == "VOLUME.1005"
    assert (await cloud.refused("AttachDataVolumeToVm", volumeUuid=root.uuid, vmInstanceUuid=vm.uuid)).code == "VOLUME.1000"
    assert (await cloud.refused("DetachDataVolumeFromVm", uuid=root.uuid)).code == "VOLUME.1000"

    await cloud.call("StartVmInstance", uuid=vm.uuid)
    xml = await cloud.node.bus.call_ok(HostRunMsg(host_uuid=root.host_uuid, fn=lambda c: c.lookupByName(
        f"zstack-{vm.uuid}").XMLDesc(0)))
    assert attached.install_path in xml.result  # part of the domain from now on
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    detached = (await cloud.call("DetachDataVolumeFromVm", uuid=vol.uuid)).inventory
    assert (detached.vm_instance_uuid, detached.device_id, detached.last_vm_instance_uuid) == (None, None, vm.uuid)
    assert (await cloud.refused("DetachDataVolumeFromVm", uuid=vol.uuid)).code == "VOLUME.1001"


async def test_attach_refusals_leave_nothing_placed(cloud: Cloud) -> None:
    vm = await cloud.vm()
    vol = (await cloud.call("CreateDataVolume", name="d", diskSize=GiB)).inventory
    before = await cloud.books()
    # The test driver of libvirt 9.0 cannot hot-plug: compute refuses, and storage puts the volume back.
    error = await cloud.refused("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)
    assert error.code != "SYS.1000", error.error
    again = (await cloud.volumes(uuid=vol.uuid))[0]
    assert (again.status, again.vm_instance_uuid, again.primary_storage_uuid) == ("NotInstantiated", None, None)
    assert await cloud.books() == before
    await cloud.call("DestroyVmInstance", uuid=vm.uuid)
    assert (await cloud.refused("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)).code == "VOLUME.1002"
    assert (await cloud.refused("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid="0" * 32)).code == "SYS.1004"
    await cloud.call("DeleteDataVolume", uuid=vol.uuid)
    assert (await cloud.refused("AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid=vm.uuid)).code == "VOLUME.1001"
    assert await cloud.books() == before


async def test_a_local_volume_only_attaches_on_its_host(cloud: Cloud) -> None:
    a = await cloud.vm("a", hostUuid=cloud.hosts[0], dataDiskSizes=[GiB])
    b = await cloud.vm("b", hostUuid=cloud.hosts[1])
    await cloud.call("StopVmInstance", uuid=a.uuid)
    await cloud.call("StopVmInstance", uuid=b.uuid)
    data = (await cloud.volumes(vmInstanceUuid=a.uuid, type="Data"))[0]
    await cloud.call("DetachDataVolumeFromVm", uuid=data.uuid)
    error = await cloud.refused("AttachDataVolumeToVm", volumeUuid=data.uuid, vmInstanceUuid=b.uuid)
    assert error.code == "VOLUME.1000" and cloud.hosts[0] in error.error.details


async def test_resize_and_snapshots_where_the_test_driver_cannot(cloud: Cloud) -> None:
    vm = await cloud.vm()
    root = (await cloud.volumes(vmInstanceUuid=vm.uuid))[0]
    before = await cloud.books()
    error = await cloud.refused("ResizeRootVolume", uuid=root.uuid, size=root.size + GiB)
    assert error.code == "VOLUME.1004"  # the test driver cannot resize: said, and nothing kept
    assert (await cloud.volumes(uuid=root.uuid))[0].size == root.size and await cloud.books() == before
    assert (await cloud.refused("CreateVolumeSnapshot", volumeUuid=root.uuid, name="s")).code == "VOLUME.1002"
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    assert (await cloud.refused("CreateVolumeSnapshot", volumeUuid=root.uuid, name="s")).code == "VOLUME.1004"
    assert await cloud.node.query.find("VolumeSnapshot") == []


async def test_detach_and_delete_primary_storage(cloud: Cloud) -> None:
    vm = await cloud.vm()
    assert (await cloud.refused("DetachPrimaryStorageFromCluster", primaryStorageUuid=cloud.ps,
                                clusterUuid=cloud.cluster)).code == "PS.1003"
    await cloud.call("DestroyVmInstance", uuid=vm.uuid)
    await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
    await cloud.call("DetachPrimaryStorageFromCluster", primaryStorageUuid=cloud.ps, clusterUuid=cloud.cluster)
    [ps] = await cloud.node.query.find("PrimaryStorage")
    assert (ps.attached_cluster_uuids, ps.total_capacity, ps.available_capacity) == ([], 0, 0)
    assert await cloud.node.db.run(lambda: ImageCacheVO.select().count()) == 0
    for host in cloud.hosts:
        pools = await cloud.node.bus.call_ok(HostRunMsg(host_uuid=host, fn=lambda c: c.listStoragePools()
                                                        + c.listDefinedStoragePools()))
        assert f"zs-{cloud.ps[:8]}" not in pools.result
    await cloud.call("DeletePrimaryStorage", uuid=cloud.ps)
    assert await cloud.node.query.find("PrimaryStorage") == []


async def test_deleting_a_host_takes_its_share_and_deleting_the_zone_its_storage(cloud: Cloud) -> None:
    await cloud.vm(hostUuid=cloud.hosts[0])
    await cloud.call("DeleteHost", uuid=cloud.hosts[1])
    books = await cloud.books()
    assert set(books) == {cloud.hosts[0]}
    await cloud.call("DeleteZone", uuid=cloud.zone)
    assert await cloud.node.query.find("PrimaryStorage") == []
    assert await cloud.node.db.run(lambda: VolumeVO.select().count() + LocalStorageHostRefVO.select().count()) == 0


async def test_a_vm_from_an_iso_gets_a_blank_root_volume_and_the_iso_as_cdrom(cloud: Cloud, iso_image: Path) -> None:
    iso = (await add_image(cloud.node, name="iso", url=str(iso_image), format="iso")).result["inventory"]["uuid"]  # type: ignore[index]
    assert (await cloud.refused("CreateVmInstance", name="no-size", cpuNum=1, memorySize=64 * MiB,
                                imageUuid=iso)).error.caused("VOLUME.1000")
    vm = await cloud.vm("from-iso", imageUuid=iso, rootDiskSize=GiB)
    [root] = await cloud.volumes(vmInstanceUuid=vm.uuid)
    assert (root.size, root.root_image_uuid) == (GiB, iso)
    vol_xml = await cloud.node.bus.call_ok(HostRunMsg(host_uuid=root.host_uuid, fn=lambda c: c.storageVolLookupByPath(
        root.install_path).XMLDesc(0)))
    assert "<backingStore>" not in vol_xml.result  # blank: the ISO is not its backing file
    xml = (await cloud.node.bus.call_ok(HostRunMsg(host_uuid=root.host_uuid, fn=lambda c: c.lookupByName(
        f"zstack-{vm.uuid}").XMLDesc(0)))).result
    cdrom = xml[xml.index("device='cdrom'"):]
    assert f"image-{iso}.iso" in cdrom[:cdrom.index("</disk>")] and "<readonly/>" in cdrom[:cdrom.index("</disk>")]
