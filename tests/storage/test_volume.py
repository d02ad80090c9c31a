"""Disk offerings and data volumes that need no host: create, bad input, delete, recover,
expunge and resize of volumes not yet placed on any primary storage."""

from __future__ import annotations

from typing import Any

import pytest

from zstack_core import ManagementNode, ZStackError
from zstack_storage.models import DiskOfferingVO, VolumeVO

GiB = 1 << 30


async def refused(node: ManagementNode, api: str, **params: Any) -> ZStackError:
    with pytest.raises(ZStackError) as info:
        await node.api_call(api, **params)
    return info.value


async def count(node: ManagementNode, model: Any) -> int:
    return await node.db.run(lambda: model.select().count())


async def test_disk_offerings(storage_node: ManagementNode) -> None:
    offering = (await storage_node.api_call("CreateDiskOffering", name="small", diskSize=GiB)).inventory
    assert offering.disk_size == GiB and offering.state == "Enabled"
    [found] = await storage_node.query.find("DiskOffering", [("diskSize", "=", GiB)])
    assert found.uuid == offering.uuid
    for params, field in [({"name": "", "diskSize": GiB}, "name"), ({"name": "z", "diskSize": 0}, "diskSize"),
                          ({"name": "n", "diskSize": -5}, "diskSize"), ({"name": "s", "diskSize": "1G"}, "$.diskSize")]:
        error = await refused(storage_node, "CreateDiskOffering", **params)
        assert error.code == "SYS.1007" and error.error.opaque["field"] == field
    await storage_node.api_call("DeleteDiskOffering", uuid=offering.uuid)
    assert (await refused(storage_node, "DeleteDiskOffering", uuid=offering.uuid)).code == "SYS.1004"
    assert await count(storage_node, DiskOfferingVO) == 0


async def test_a_data_volume_is_created_not_instantiated(storage_node: ManagementNode) -> None:
    offering = (await storage_node.api_call("CreateDiskOffering", name="o", diskSize=2 * GiB)).inventory
    by_offering = (await storage_node.api_call("CreateDataVolume", name="a", diskOfferingUuid=offering.uuid)).inventory
    by_size = (await storage_node.api_call("CreateDataVolume", name="b", diskSize=GiB)).inventory
    assert (by_offering.size, by_offering.disk_offering_uuid) == (2 * GiB, offering.uuid)
    for vol in (by_offering, by_size):
        assert (vol.type, vol.status, vol.primary_storage_uuid, vol.install_path) == ("Data", "NotInstantiated", None, None)
    assert {v.uuid for v in await storage_node.query.find("Volume", [("status", "=", "NotInstantiated")])} == {
        by_offering.uuid, by_size.uuid}


@pytest.mark.parametrize(("params", "code"), [
    ({"name": "x"}, "SYS.1007"),  # neither an offering nor a size
    ({"name": "x", "diskSize": GiB, "diskOfferingUuid": "0" * 32}, "SYS.1007"),  # both
    ({"name": "x", "diskSize": 0}, "SYS.1007"),
    ({"name": "x", "diskSize": -1}, "SYS.1007"),
    ({"name": " ", "diskSize": GiB}, "SYS.1007"),
    ({"name": "x", "diskOfferingUuid": "0" * 32}, "SYS.1004"),
    ({"name": "x", "diskSize": 1.5}, "SYS.1007"),
])
async def test_bad_data_volumes_are_refused(storage_node: ManagementNode, params: dict[str, Any], code: str) -> None:
    assert (await refused(storage_node, "CreateDataVolume", **params)).code == code
    assert await count(storage_node, VolumeVO) == 0


async def test_delete_recover_expunge_a_volume_never_placed(storage_node: ManagementNode) -> None:
    vol = (await storage_node.api_call("CreateDataVolume", name="d", diskSize=GiB)).inventory
    assert (await refused(storage_node, "ExpungeDataVolume", uuid=vol.uuid)).code == "VOLUME.1001"
    assert (await refused(storage_node, "RecoverDataVolume", uuid=vol.uuid)).code == "VOLUME.1001"
    await storage_node.api_call("DeleteDataVolume", uuid=vol.uuid)
    assert (await storage_node.query.find("Volume"))[0].status == "Deleted"
    assert (await refused(storage_node, "DeleteDataVolume", uuid=vol.uuid)).code == "VOLUME.1001"
    recovered = (await storage_node.api_call("RecoverDataVolume", uuid=vol.uuid)).inventory
    assert recovered.status == "NotInstantiated"
    await storage_node.api_call("DeleteDataVolume", uuid=vol.uuid)
    await storage_node.api_call("ExpungeDataVolume", uuid=vol.uuid)
    assert await count(storage_node, VolumeVO) == 0
    assert (await refused(storage_node, "DeleteDataVolume", uuid=vol.uuid)).code == "SYS.1004"


async def test_resize_grows_only(storage_node: ManagementNode) -> None:
    vol = (await storage_node.api_call("CreateDataVolume", name="d", diskSize=GiB)).inventory
    grown = (await storage_node.api_call("ResizeDataVolume", uuid=vol.uuid, size=2 * GiB)).inventory
    assert grown.size == 2 * GiB
    for size in (2 * GiB, GiB):
        error = await refused(storage_node, "ResizeDataVolume", uuid=vol.uuid, size=size)
        assert error.code == "VOLUME.1000" and "only grow" in error.error.details
    assert (await refused(storage_node, "ResizeRootVolume", uuid=vol.uuid, size=4 * GiB)).code == "VOLUME.1000"
    assert (await storage_node.query.find("Volume"))[0].size == 2 * GiB


async def test_without_compute_hosts_and_vms_are_unknown(storage_node: ManagementNode) -> None:
    """Storage alone starts and serves its APIs; what needs compute says so."""
    vol = (await storage_node.api_call("CreateDataVolume", name="d", diskSize=GiB)).inventory
    error = await refused(storage_node, "AttachDataVolumeToVm", volumeUuid=vol.uuid, vmInstanceUuid="0" * 32)
    assert error.code == "SYS.1003" and "VmInstance" in error.error.details
    error = await refused(storage_node, "AddLocalPrimaryStorage", name="ls", zoneUuid="0" * 32, url="/var/lib/zs")
    assert error.code == "SYS.1003" and "Zone" in error.error.details


@pytest.mark.parametrize("url", ["relative/dir", "/", "", "/tmp/a\nb"])
async def test_local_primary_storage_needs_an_absolute_directory(storage_node: ManagementNode, url: str) -> None:
    error = await refused(storage_node, "AddLocalPrimaryStorage", name="ls", zoneUuid="0" * 32, url=url)
    assert error.code == "SYS.1007" and error.error.opaque["field"] == "url"


# -- the VM-create check, called as compute calls it --------------------------------------------


def spec_of(**kwargs: Any) -> Any:
    from zstack_core.header.compute import VmInstanceInventory, VmInstanceSpec

    return VmInstanceSpec(vm=VmInstanceInventory(uuid="f" * 32, name="vm", state="Created"), **kwargs)


async def test_vm_create_check(storage_node: ManagementNode, qcow2_image: Any, iso_image: Any) -> None:
    from .test_image import add_image

    check = storage_node.hooks.vm_create_check
    qcow2 = (await add_image(storage_node, name="q", url=str(qcow2_image), format="qcow2")).result["inventory"]["uuid"]  # type: ignore[index]
    iso = (await add_image(storage_node, name="i", url=str(iso_image), format="iso")).result["inventory"]["uuid"]  # type: ignore[index]
    data = (await add_image(storage_node, name="d", url=str(qcow2_image), format="qcow2",
                            mediaType="DataVolumeTemplate")).result["inventory"]["uuid"]  # type: ignore[index]
    offering = (await storage_node.api_call("CreateDiskOffering", name="o", diskSize=GiB)).inventory.uuid
    await check(spec_of(image_uuid=qcow2, data_disk_offering_uuids=[offering], data_disk_sizes=[GiB]))
    await check(spec_of())  # a VM without an image gets no root volume: nothing to refuse
    await check(spec_of(image_uuid=iso, root_disk_size=GiB))

    async def code(**kwargs: Any) -> str:
        with pytest.raises(ZStackError) as info:
            await check(spec_of(**kwargs))
        return info.value.code

    assert await code(image_uuid="0" * 32) == "SYS.1004"
    assert await code(image_uuid=data) == "IMAGE.1000"
    assert await code(image_uuid=iso) == "VOLUME.1000"  # an ISO needs a root disk size
    assert await code(image_uuid=qcow2, root_disk_size=0) == "VOLUME.1000"
    assert await code(image_uuid=qcow2, data_disk_sizes=[-1]) == "VOLUME.1000"
    assert await code(image_uuid=qcow2, data_disk_offering_uuids=["0" * 32]) == "SYS.1004"
    assert await code(image_uuid=qcow2, data_disk_sizes=[GiB] * 25) == "VOLUME.1003"  # 24 by default
    await storage_node.api_call("DeleteImage", uuid=qcow2)
    assert await code(image_uuid=qcow2) == "IMAGE.1005"
