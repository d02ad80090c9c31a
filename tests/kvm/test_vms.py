"""VM instances on libvirt's test driver: create (flows, placement, capacity, rollback, bad
input), the state machine, extension points, devices from other plugins, hot-plug limits of the
test driver, and VM state following libvirt (events and the periodic reconcile)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import libvirt
import pytest

from zstack_core import Flow, FlowContribution, ManagementNode, ZStackError, hookimpl
from zstack_core.check import check
from zstack_core.header import DiskTO, NicTO, VmCreateFlows, VmReleaseFlows, VolumeInventory
from zstack_core.header.messages import HostRunMsg, VmAttachDiskMsg, VmAttachNicMsg, VmDetachDiskMsg
from zstack_kvm.domain import Domain

from .conftest import Cloud, make_cloud, start_node
from .test_hosts import wait_for
from .test_resources import expect_error

MiB = 1 << 20


async def capacity(cloud: Cloud, host_uuid: str | None = None) -> tuple[int, int]:
    h = await cloud.host_row(host_uuid)
    return h.available_cpu, h.available_memory


async def zstack_domains(cloud: Cloud, host_uuid: str | None = None) -> dict[str, int]:
    return {k: v for k, v in (await cloud.domains(host_uuid)).items() if k.startswith("zstack-")}


async def run_on_host(cloud: Cloud, fn: Any, host_uuid: str | None = None) -> Any:
    return (await cloud.node.bus.call_ok(HostRunMsg(host_uuid=host_uuid or cloud.host.uuid, fn=fn))).result


async def domain_xml(cloud: Cloud, vm_uuid: str) -> Domain:
    return Domain.from_xml(await run_on_host(cloud, lambda c: c.lookupByName("zstack-" + vm_uuid).XMLDesc(0)))


# -- create -----------------------------------------------------------------------------------


async def test_create_takes_exactly_its_capacity_and_runs(cloud: Cloud) -> None:
    cpu0, mem0 = await capacity(cloud)
    vm = await cloud.create_vm(name="web", cpu=2, memory=256 * MiB, description="d")
    assert (vm.state, vm.host_uuid, vm.cluster_uuid, vm.zone_uuid) == ("Running", cloud.host.uuid,
                                                                       cloud.cluster.uuid, cloud.zone.uuid)
    assert (vm.cpu_num, vm.memory_size, vm.last_host_uuid) == (2, 256 * MiB, cloud.host.uuid)
    assert await capacity(cloud) == (cpu0 - 2, mem0 - 256 * MiB)
    assert (await zstack_domains(cloud)) == {"zstack-" + vm.uuid: libvirt.VIR_DOMAIN_RUNNING}
    dom = await domain_xml(cloud, vm.uuid)
    assert (dom.memory_kib, dom.vcpu, dom.type, dom.title) == (256 * 1024, 2, "test", "web")
    found = await cloud.call("QueryVmInstance", conditions=[{"name": "name", "op": "=", "value": "web"}])
    assert [v.uuid for v in found.inventories] == [vm.uuid]


async def test_create_from_an_instance_offering(cloud: Cloud) -> None:
    offering = (await cloud.call("CreateInstanceOffering", name="o", cpuNum=3, memorySize=96 * MiB)).inventory
    vm = (await cloud.call("CreateVmInstance", name="vm", instanceOfferingUuid=offering.uuid)).inventory
    assert (vm.cpu_num, vm.memory_size, vm.instance_offering_uuid) == (3, 96 * MiB, offering.uuid)
    await cloud.call("ChangeInstanceOfferingState", uuid=offering.uuid, stateEvent="disable")
    await expect_error("VM.1000", cloud.call("CreateVmInstance", name="vm2", instanceOfferingUuid=offering.uuid))


@pytest.mark.parametrize("body, code", [
    ({"name": "", "cpuNum": 1, "memorySize": 64 * MiB}, "SYS.1007"),
    ({"cpuNum": 1, "memorySize": 64 * MiB}, "SYS.1007"),
    ({"name": "v"}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1}, "SYS.1007"),
    ({"name": "v", "memorySize": 64 * MiB}, "SYS.1007"),
    ({"name": "v", "cpuNum": 0, "memorySize": 64 * MiB}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 1000}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": -64 * MiB}, "SYS.1007"),
    ({"name": "v", "cpuNum": "1", "memorySize": 64 * MiB}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "strategy": "Later"}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "instanceOfferingUuid": "0" * 32}, "SYS.1007"),
    ({"name": "v", "instanceOfferingUuid": "0" * 32}, "VM.1003"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "zoneUuid": "0" * 32}, "ZONE.1000"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "clusterUuid": "0" * 32}, "CLUSTER.1000"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "hostUuid": "0" * 32}, "HOST.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "imageUuid": "0" * 32}, "VM.1006"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "l3NetworkUuids": ["0" * 32]}, "VM.1006"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "rootDiskSize": 1 << 30}, "VM.1006"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "rootDiskSize": 0}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "dataDiskOfferingUuids": ["0" * 32]}, "VM.1006"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "dataDiskSizes": [-1]}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "l3NetworkUuids": ["a", "a"]}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "systemTags": ["qemu-img::version::1"]}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "systemTags": ["bootOrder::floppy"]}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 64 * MiB, "colour": "red"}, "SYS.1007"),
    ({"name": "v", "cpuNum": 1, "memorySize": 1 << 40}, "VM.1007"),
])
async def test_create_refuses_bad_input_and_leaves_nothing(cloud: Cloud, body: dict[str, Any], code: str) -> None:
    before = await capacity(cloud)
    err = await expect_error(code, cloud.call("CreateVmInstance", body))
    if code == "VM.1007":
        assert err.error.caused("HOST.1004")
    assert await cloud.node.query.find("VmInstance") == []
    assert await zstack_domains(cloud) == {}
    assert await capacity(cloud) == before


async def test_inconsistent_placement_is_refused(cloud: Cloud, driver_xml: Any) -> None:
    zone2 = (await cloud.call("CreateZone", name="z2")).inventory
    cluster2 = (await cloud.call("CreateCluster", name="c2", zoneUuid=zone2.uuid)).inventory
    for body in ({"hostUuid": cloud.host.uuid, "clusterUuid": cluster2.uuid},
                 {"hostUuid": cloud.host.uuid, "zoneUuid": zone2.uuid},
                 {"clusterUuid": cloud.cluster.uuid, "zoneUuid": zone2.uuid}):
        await expect_error("SYS.1007", cloud.call("CreateVmInstance", name="v", cpuNum=1, memorySize=64 * MiB, **body))
    # a zone without hosts cannot take it: allocation fails inside the chain, nothing remains
    err = await expect_error("VM.1007", cloud.create_vm(zoneUuid=zone2.uuid))
    assert err.error.caused("HOST.1004")
    assert await cloud.node.query.find("VmInstance") == []


async def test_placement_and_least_used_strategy(cloud: Cloud, driver_xml: Any) -> None:
    big = (await cloud.call("AddKVMHost", name="big", clusterUuid=cloud.cluster.uuid,
                            url=driver_xml(cpus=8, memory_mib=8192))).inventory
    vm = await cloud.create_vm()
    assert vm.host_uuid == big.uuid  # the one with the most free memory
    pinned = await cloud.create_vm(hostUuid=cloud.host.uuid)
    assert pinned.host_uuid == cloud.host.uuid
    await cloud.call("ChangeClusterState", uuid=cloud.cluster.uuid, stateEvent="disable")
    await expect_error("VM.1007", cloud.create_vm())
    await cloud.call("ChangeClusterState", uuid=cloud.cluster.uuid, stateEvent="enable")
    await cloud.call("ChangeZoneState", uuid=cloud.zone.uuid, stateEvent="disable")
    await expect_error("VM.1007", cloud.create_vm())


async def test_parallel_creates_never_overcommit(node: ManagementNode, driver_xml: Any) -> None:
    # 1 GiB host - 512 MiB reserved = room for exactly 8 VMs of 64 MiB
    cloud = await make_cloud(node, url=driver_xml(cpus=2, memory_mib=1024))
    results = await asyncio.gather(*(cloud.create_vm(name=f"v{i}") for i in range(20)), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 8 and len(failed) == 12
    assert all(isinstance(e, ZStackError) and e.error.caused("HOST.1004") for e in failed)
    assert await capacity(cloud) == (20 - 8, 0)
    assert len(await zstack_domains(cloud)) == 8
    await asyncio.gather(*(cloud.call("DestroyVmInstance", uuid=v.uuid) for v in made))
    assert await capacity(cloud) == (20, 512 * MiB)


class FailingPost(Flow):
    name = "test-failing-post"

    async def run(self, data: dict[str, Any]) -> None:
        raise ZStackError(data["node"].error_spaces["VM"][1].error("1000", "injected failure"))


class Recorder:
    """A test plugin: records extension-point calls; may add a failing flow or veto creates."""

    def __init__(self, fail_post: bool = False, veto: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_post = fail_post
        self.veto = veto
        self.disks: list[DiskTO] = []
        self.nics: list[NicTO] = []

    @hookimpl
    def zstack_flows(self) -> list[FlowContribution]:
        if not self.fail_post:
            return []
        return [FlowContribution(chain=VmCreateFlows.CHAIN, flow=FailingPost(), order=VmCreateFlows.INSTANTIATE_POST)]

    @hookimpl
    def zstack_vm_create_check(self, spec: Any) -> None:
        self.calls.append(("create_check", spec.vm.name))
        if self.veto:
            raise ZStackError(spec_error("quota exceeded"))

    @hookimpl
    def zstack_vm_domain_devices(self, spec: Any) -> None:
        self.calls.append(("devices", spec.destination_host.uuid if spec.destination_host else None))
        spec.disks.extend(self.disks)
        spec.nic_tos.extend(self.nics)

    @hookimpl
    def zstack_vm_release_resource(self, spec: Any, reason: str) -> None:
        self.calls.append(("release", reason))

    @hookimpl
    def zstack_vm_state_changed(self, vm: Any, old_state: str, new_state: str) -> None:
        self.calls.append(("state", old_state, new_state))

    @hookimpl
    def zstack_vm_before_start(self, vm: Any) -> None:
        self.calls.append(("before_start",))

    @hookimpl
    def zstack_vm_after_start(self, vm: Any) -> None:
        self.calls.append(("after_start", vm.state))

    @hookimpl
    def zstack_vm_before_stop(self, vm: Any) -> None:
        self.calls.append(("before_stop",))

    @hookimpl
    def zstack_vm_after_stop(self, vm: Any) -> None:
        self.calls.append(("after_stop", vm.state))

    @hookimpl
    def zstack_vm_before_reboot(self, vm: Any) -> None:
        self.calls.append(("before_reboot",))

    @hookimpl
    def zstack_vm_after_reboot(self, vm: Any) -> None:
        self.calls.append(("after_reboot", vm.state))

    @hookimpl
    def zstack_vm_before_destroy(self, vm: Any) -> None:
        self.calls.append(("before_destroy",))

    @hookimpl
    def zstack_vm_after_destroy(self, vm: Any) -> None:
        self.calls.append(("after_destroy", vm.state))

    @hookimpl
    def zstack_vm_after_attach_volume(self, vm: Any, volume: Any) -> None:
        self.calls.append(("attached", volume.uuid))

    @hookimpl
    def zstack_vm_failed_to_attach_volume(self, vm: Any, volume: Any, error: Any) -> None:
        self.calls.append(("attach_failed", error.code))

    @hookimpl
    def zstack_network_services_apply(self, spec: Any) -> None:
        self.calls.append(("net_apply",))

    @hookimpl
    def zstack_network_services_release(self, spec: Any) -> None:
        self.calls.append(("net_release",))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


def spec_error(text: str) -> Any:
    from zstack_kvm.errors import VmErrors

    return VmErrors.error("1000", text)


async def test_failure_at_instantiate_post_rolls_everything_back(isolated_env: Path) -> None:
    recorder = Recorder(fail_post=True)
    node = await start_node(isolated_env, plugins=[recorder])
    try:
        cloud = await make_cloud(node)
        before = await capacity(cloud)
        err = await expect_error("VM.1007", cloud.create_vm(systemTags=["bootOrder::hd,cdrom"]))
        assert err.error.caused("VM.1000") and "injected failure" in str(err.error)
        assert await zstack_domains(cloud) == {}  # the domain was defined, started, then destroyed
        assert ("devices", cloud.host.uuid) in recorder.calls  # it really got that far
        assert await capacity(cloud) == before
        assert recorder.of("release") == [("release", "rollback")]
        assert recorder.of("net_apply") and recorder.of("net_release")
        assert await node.query.find("VmInstance") == []
        assert await node.query.find("SystemTag", [("tag", "like", "bootOrder%")]) == []
    finally:
        await node.stop()


async def test_create_check_veto_allocates_nothing(isolated_env: Path) -> None:
    recorder = Recorder(veto=True)
    node = await start_node(isolated_env, plugins=[recorder])
    try:
        cloud = await make_cloud(node)
        before = await capacity(cloud)
        await expect_error("VM.1000", cloud.create_vm(name="nope"))
        assert recorder.calls == [("create_check", "nope")]
        assert await capacity(cloud) == before and await node.query.find("VmInstance") == []
    finally:
        await node.stop()


# -- the state machine ------------------------------------------------------------------------


async def test_lifecycle_state_machine_and_hooks(isolated_env: Path) -> None:
    recorder = Recorder()
    node = await start_node(isolated_env, plugins=[recorder])
    try:
        cloud = await make_cloud(node)
        full = await capacity(cloud)
        vm = await cloud.create_vm(cpu=2, memory=128 * MiB)
        held = (full[0] - 2, full[1] - 128 * MiB)
        uuid = vm.uuid

        async def do(api: str, **kw: Any) -> str:
            r = await cloud.call(api, uuid=uuid, **kw)
            return r.inventory.state if r.inventory else "gone"

        assert await do("StopVmInstance") == "Stopped"
        assert await capacity(cloud) == full and await zstack_domains(cloud) == {}
        assert await do("StopVmInstance", type="cold") == "Stopped"  # stopping a stopped VM is a no-op
        await expect_error("VM.1001", do("PauseVmInstance"))
        await expect_error("VM.1001", do("RebootVmInstance"))
        await expect_error("VM.1001", do("ResumeVmInstance"))
        await expect_error("VM.1001", do("ExpungeVmInstance"))
        await expect_error("VM.1001", do("RecoverVmInstance"))
        await expect_error("SYS.1007", do("StopVmInstance", type="warm"))
        assert await do("StartVmInstance") == "Running"
        assert await capacity(cloud) == held
        assert await do("StartVmInstance") == "Running"  # no-op
        assert await do("RebootVmInstance") == "Running"
        assert await capacity(cloud) == held
        assert await do("PauseVmInstance") == "Paused"
        assert (await zstack_domains(cloud))["zstack-" + uuid] == libvirt.VIR_DOMAIN_PAUSED
        await expect_error("VM.1001", do("RebootVmInstance"))
        assert await do("ResumeVmInstance") == "Running"
        assert await do("StopVmInstance", type="cold") == "Stopped"
        assert await do("StartVmInstance") == "Running"
        assert await do("DestroyVmInstance") == "Destroyed"
        assert await capacity(cloud) == full and await zstack_domains(cloud) == {}
        await expect_error("VM.1001", do("StartVmInstance"))
        assert await do("RecoverVmInstance") == "Stopped"
        assert await do("DestroyVmInstance") == "Destroyed"
        assert await do("ExpungeVmInstance") == "gone"
        await expect_error("VM.1002", do("StartVmInstance"))
        assert await node.query.find("VmInstance") == []
        assert await capacity(cloud) == full

        assert recorder.of("before_start") and recorder.of("after_start") == [("after_start", "Running")] * 2
        assert recorder.of("after_stop") == [("after_stop", "Stopped")] * 2
        assert recorder.of("after_reboot") == [("after_reboot", "Running")]
        assert recorder.of("after_destroy") == [("after_destroy", "Destroyed")] * 2
        assert recorder.of("release") == [("release", "expunge")]
        states = [c[1:] for c in recorder.of("state")]
        assert states[:4] == [("Starting", "Running"), ("Running", "Stopping"), ("Stopping", "Stopped"),
                              ("Stopped", "Starting")]
        assert ("Running", "Rebooting") in states and ("Rebooting", "Running") in states
        assert ("Running", "Paused") in states and ("Paused", "Running") in states
        assert ("Destroyed", "Stopped") in states and states[-1] == ("Expunging", "Expunged")
    finally:
        await node.stop()


async def test_create_stopped_holds_no_capacity(cloud: Cloud) -> None:
    before = await capacity(cloud)
    vm = await cloud.create_vm(strategy="CreateStopped")
    assert (vm.state, vm.host_uuid, vm.last_host_uuid) == ("Stopped", None, cloud.host.uuid)
    assert await capacity(cloud) == before and await zstack_domains(cloud) == {}
    started = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory
    assert (started.state, started.host_uuid) == ("Running", cloud.host.uuid)


async def test_update_vm(cloud: Cloud) -> None:
    vm = await cloud.create_vm()
    assert (await cloud.call("UpdateVmInstance", uuid=vm.uuid, name="new", description="x")).inventory.name == "new"
    await expect_error("SYS.1007", cloud.call("UpdateVmInstance", uuid=vm.uuid, name=""))
    await expect_error("VM.1002", cloud.call("UpdateVmInstance", uuid="0" * 32, name="x"))


async def test_migrate_console_and_l3_limits_without_qemu_or_network(cloud: Cloud, driver_xml: Any) -> None:
    other = (await cloud.call("AddKVMHost", name="h2", clusterUuid=cloud.cluster.uuid, url=driver_xml())).inventory
    vm = await cloud.create_vm(hostUuid=cloud.host.uuid)
    await expect_error("VM.1005", cloud.call("MigrateVm", vmInstanceUuid=vm.uuid, hostUuid=other.uuid))
    await expect_error("VM.1005", cloud.call("MigrateVm", vmInstanceUuid=vm.uuid))
    await expect_error("VM.1000", cloud.call("MigrateVm", vmInstanceUuid=vm.uuid, hostUuid=cloud.host.uuid))
    await expect_error("HOST.1007", cloud.call("MigrateVm", vmInstanceUuid=vm.uuid, hostUuid="0" * 32))
    assert (await cloud.vm(vm.uuid)).state == "Running"
    assert await capacity(cloud, other.uuid) == (other.total_cpu, other.available_memory)  # nothing leaked
    await expect_error("VM.1005", cloud.call("GetVmConsoleAddress", uuid=vm.uuid))  # the test driver has no port
    await expect_error("VM.1006", cloud.call("AttachL3NetworkToVm", vmInstanceUuid=vm.uuid, l3NetworkUuid="0" * 32))
    await expect_error("VM.1006", cloud.call("DetachL3NetworkFromVm", vmNicUuid="0" * 32))
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    await expect_error("VM.1001", cloud.call("MigrateVm", vmInstanceUuid=vm.uuid))
    await expect_error("VM.1001", cloud.call("GetVmConsoleAddress", uuid=vm.uuid))


# -- devices from other plugins ---------------------------------------------------------------


async def test_devices_come_from_the_domain_devices_hook_and_hot_plug_limits(isolated_env: Path) -> None:
    recorder = Recorder()
    recorder.disks = [DiskTO(volume_uuid="a" * 32, path="/var/lib/zstack/root.qcow2", device_id=0)]
    recorder.nics = [NicTO(nic_uuid="b" * 32, mac="52:54:00:12:34:56", bridge="br_eth0")]
    node = await start_node(isolated_env, plugins=[recorder])
    try:
        cloud = await make_cloud(node)
        vm = await cloud.create_vm()
        dom = await domain_xml(cloud, vm.uuid)
        assert [(d.source, d.target_dev, d.serial) for d in dom.disks] == [("/var/lib/zstack/root.qcow2", "vda", "a" * 32)]
        assert [(i.mac, i.source, i.type) for i in dom.interfaces] == [("52:54:00:12:34:56", "br_eth0", "bridge")]

        volume = VolumeInventory(uuid="c" * 32, name="data", type="Data", size=1 << 30)
        disk = DiskTO(volume_uuid=volume.uuid, path="/var/lib/zstack/data.qcow2", device_id=1)
        reply = await node.bus.call(VmAttachDiskMsg(vm_instance_uuid=vm.uuid, volume=volume, disk=disk))
        assert reply.error is not None and reply.error.code == "VM.1005"  # libvirt 9.0's test driver cannot
        assert recorder.of("attach_failed") == [("attach_failed", "VM.1005")]
        reply = await node.bus.call(VmAttachNicMsg(vm_instance_uuid=vm.uuid, nic=_nic(vm.uuid),
                                                   nic_to=NicTO(nic_uuid="d" * 32, mac="52:54:00:00:00:02",
                                                                bridge="br_eth0")))
        assert reply.error is not None and reply.error.code == "VM.1005"

        await cloud.call("StopVmInstance", uuid=vm.uuid)
        await node.bus.call_ok(VmAttachDiskMsg(vm_instance_uuid=vm.uuid, volume=volume, disk=disk))
        assert recorder.of("attached") == [("attached", volume.uuid)]
        recorder.disks.append(disk)  # storage now reports it among the VM's devices
        await cloud.call("StartVmInstance", uuid=vm.uuid)
        dom = await domain_xml(cloud, vm.uuid)
        assert [d.target_dev for d in dom.disks] == ["vda", "vdb"]
        await cloud.call("StopVmInstance", uuid=vm.uuid)
        await node.bus.call_ok(VmDetachDiskMsg(vm_instance_uuid=vm.uuid, volume=volume, disk=disk))
        await cloud.call("DestroyVmInstance", uuid=vm.uuid)
        reply = await node.bus.call(VmAttachDiskMsg(vm_instance_uuid=vm.uuid, volume=volume, disk=disk))
        assert reply.error is not None and reply.error.code == "VM.1001"
        reply = await node.bus.call(VmAttachDiskMsg(vm_instance_uuid="0" * 32, volume=volume, disk=disk))
        assert reply.error is not None and reply.error.code == "VM.1002"
    finally:
        await node.stop()


def _nic(vm_uuid: str) -> Any:
    from zstack_core.header import VmNicInventory

    return VmNicInventory(uuid="d" * 32, vm_instance_uuid=vm_uuid, l3_network_uuid="e" * 32, mac="52:54:00:00:00:02")


# -- VM state follows libvirt -----------------------------------------------------------------


async def test_vm_destroyed_outside_is_seen_stopped(cloud: Cloud) -> None:
    vm = await cloud.create_vm(memory=128 * MiB)
    before_cpu, before_mem = await capacity(cloud)
    await run_on_host(cloud, lambda c: c.lookupByName("zstack-" + vm.uuid).destroy())  # "virsh destroy"
    await wait_for(lambda: _state_is(cloud, vm.uuid, "Stopped"), what="Stopped")
    assert await capacity(cloud) == (before_cpu + 1, before_mem + 128 * MiB)
    assert await zstack_domains(cloud) == {}  # the leftover definition was removed
    row = await cloud.vm(vm.uuid)
    assert (row.host_uuid, row.last_host_uuid) == (None, cloud.host.uuid)


async def test_a_domain_left_while_its_host_was_unreachable_is_removed(cloud: Cloud) -> None:
    """What a start that failed while its host was unreachable leaves: the API answered with an
    error and the VM is Stopped, but QEMU had been launched, and the rollback could not reach the
    host to remove it (it left a ``LeftDomainVO`` row). The sync finishes the rollback once it
    sees the domain. (A running domain of a Stopped VM with no such row is left alone, for
    ``zstack check`` to report as a stray domain.)"""
    from zstack_kvm.models import LeftDomainVO

    vm = await cloud.create_vm(memory=128 * MiB)
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    before_cpu, before_mem = await capacity(cloud)
    assert await zstack_domains(cloud) == {}
    xml = (f"<domain type='test'><name>zstack-{vm.uuid}</name><uuid>{vm.uuid}</uuid>"
           "<memory>131072</memory><os><type>hvm</type></os></domain>")
    await cloud.node.db.run(lambda: LeftDomainVO.insert(vm_uuid=vm.uuid, host_uuid=cloud.host.uuid).execute())
    await run_on_host(cloud, lambda c: c.createXML(xml, 0))  # running, as the failed start left it
    await cloud.node.configs.update("kvm", "vm.syncInterval", 0.2)

    async def finished() -> bool:
        left = await cloud.node.db.run(lambda: LeftDomainVO.select().count())
        return left == 0 and await _no_domains(cloud)

    await wait_for(finished, what="the domain and its LeftDomainVO row removed")
    assert await _state_is(cloud, vm.uuid, "Stopped")
    assert await capacity(cloud) == (before_cpu, before_mem)  # nothing taken or given back twice


async def test_a_left_domain_row_does_not_remove_the_vm_once_it_runs_there_again(cloud: Cloud) -> None:
    """The row names a domain to remove on a host; if the VM has been started on that host since,
    the domain there is its own: the row goes, the domain stays."""
    from zstack_kvm.models import LeftDomainVO

    vm = await cloud.create_vm(memory=128 * MiB)
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    await cloud.node.db.run(lambda: LeftDomainVO.insert(vm_uuid=vm.uuid, host_uuid=cloud.host.uuid).execute())
    await cloud.call("StartVmInstance", uuid=vm.uuid)
    await cloud.node.configs.update("kvm", "vm.syncInterval", 0.2)
    await wait_for(lambda: _no_left_rows(cloud), what="the LeftDomainVO row forgotten")
    assert await _state_is(cloud, vm.uuid, "Running")
    assert (await zstack_domains(cloud))["zstack-" + vm.uuid] == libvirt.VIR_DOMAIN_RUNNING


async def _no_left_rows(cloud: Cloud) -> bool:
    from zstack_kvm.models import LeftDomainVO

    return await cloud.node.db.run(lambda: LeftDomainVO.select().count()) == 0


def _host_unreachable(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every libvirt call of the node to the host fails as it does when libvirtd is gone."""
    from zstack_kvm.errors import HostErrors

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise HostErrors.exc("1008", "libvirt: Cannot write data: Broken pipe")

    monkeypatch.setattr(cloud.node.services["compute"].hosts, "run_on", unreachable)  # type: ignore[attr-defined]


async def test_a_reboot_that_cannot_reach_the_host_leaves_the_vm_unknown(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reboot whose host stops answering cannot tell whether the guest still runs: the VM is
    ``Unknown`` and keeps its host and capacity (``Stopped`` would hide a running guest, which
    CI's libvirtd-kill test caught); once the host answers, the sync finds it Running."""
    await cloud.node.configs.update("kvm", "vm.syncInterval", 3600.0)
    vm = await cloud.create_vm(memory=128 * MiB)
    held = await capacity(cloud)
    _host_unreachable(cloud, monkeypatch)
    await expect_error("HOST.1008", cloud.call("RebootVmInstance", uuid=vm.uuid))
    row = await cloud.vm(vm.uuid)
    assert (row.state, row.host_uuid) == ("Unknown", cloud.host.uuid)
    assert await capacity(cloud) == held
    monkeypatch.undo()
    await cloud.node.configs.update("kvm", "vm.syncInterval", 0.2)
    await wait_for(lambda: _state_is(cloud, vm.uuid, "Running"), what="Running again")
    assert await capacity(cloud) == held


async def test_a_forced_stop_that_cannot_reach_the_host_leaves_no_domain(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forced stop (a host deleted, a cascade) gives the capacity back even when the host cannot
    be reached; the domain it could not power off is removed once the host answers."""
    from zstack_kvm.models import LeftDomainVO

    await cloud.node.configs.update("kvm", "vm.syncInterval", 3600.0)
    full = await capacity(cloud)
    vm = await cloud.create_vm(memory=128 * MiB)
    _host_unreachable(cloud, monkeypatch)
    compute: Any = cloud.node.services["compute"]
    await cloud.node.tasks.run(f"vm-{vm.uuid}", lambda: compute.vms.stop(vm.uuid, graceful=False, force=True))
    monkeypatch.undo()
    assert await _state_is(cloud, vm.uuid, "Stopped") and await capacity(cloud) == full
    assert "zstack-" + vm.uuid in await zstack_domains(cloud)  # still running there
    assert await cloud.node.db.run(lambda: LeftDomainVO.select().count()) == 1
    report = await check(cloud.node)  # the checker knows it is on its way out
    assert [(f.kind, f.resource_uuid) for f in report.findings] == [("left-domain", vm.uuid)]
    await cloud.node.configs.update("kvm", "vm.syncInterval", 0.2)

    async def finished() -> bool:
        return await _no_left_rows(cloud) and await _no_domains(cloud)

    await wait_for(finished, what="the domain the forced stop left removed")
    assert await _state_is(cloud, vm.uuid, "Stopped") and await capacity(cloud) == full
    assert (await check(cloud.node)).ok


async def _no_domains(cloud: Cloud) -> bool:
    return await zstack_domains(cloud) == {}


async def test_pause_and_resume_outside_are_followed_through_events(isolated_env: Path) -> None:
    node = await start_node(isolated_env)
    try:
        await node.configs.update("kvm", "vm.syncInterval", 3600.0)  # only events can tell
        cloud = await make_cloud(node)
        vm = await cloud.create_vm()
        await run_on_host(cloud, lambda c: c.lookupByName("zstack-" + vm.uuid).suspend())
        await wait_for(lambda: _state_is(cloud, vm.uuid, "Paused"), timeout=5, what="Paused by event")
        await run_on_host(cloud, lambda c: c.lookupByName("zstack-" + vm.uuid).resume())
        await wait_for(lambda: _state_is(cloud, vm.uuid, "Running"), timeout=5, what="Running by event")
    finally:
        await node.stop()


async def _state_is(cloud: Cloud, uuid: str, state: str) -> bool:
    return bool((await cloud.vm(uuid)).state == state)


async def test_delete_cluster_destroys_and_expunges_its_vms(isolated_env: Path) -> None:
    recorder = Recorder()
    node = await start_node(isolated_env, plugins=[recorder])
    try:
        cloud = await make_cloud(node)
        vms = [await cloud.create_vm(name=f"v{i}") for i in range(3)]
        await cloud.call("StopVmInstance", uuid=vms[1].uuid)
        await cloud.call("DeleteCluster", uuid=cloud.cluster.uuid)
        assert await node.query.find("VmInstance") == [] and await node.query.find("Host") == []
        assert recorder.of("release") == [("release", "expunge")] * 3
        assert len(await node.query.find("Zone")) == 1
    finally:
        await node.stop()


async def test_release_chain_runs_on_expunge(isolated_env: Path) -> None:
    ran: list[str] = []

    class ReleaseNic(Flow):
        async def run(self, data: dict[str, Any]) -> None:
            ran.append(data["spec"].vm.uuid)

    class Plugin:
        @hookimpl
        def zstack_flows(self) -> list[FlowContribution]:
            return [FlowContribution(chain=VmReleaseFlows.CHAIN, flow=ReleaseNic(), order=VmReleaseFlows.RELEASE_NIC)]

    node = await start_node(isolated_env, plugins=[Plugin()])
    try:
        cloud = await make_cloud(node)
        vm = await cloud.create_vm()
        await cloud.call("DestroyVmInstance", uuid=vm.uuid)
        await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
        assert ran == [vm.uuid]
        from zstack_core.ownership import owner_of_sync

        assert await node.db.run(lambda: owner_of_sync(vm.uuid)) is None
    finally:
        await node.stop()


async def test_allocator_strategies_are_an_extension_point(isolated_env: Path, driver_xml: Any) -> None:
    from zstack_core.header.backends import HostAllocatorStrategy

    class SmallestFirst(HostAllocatorStrategy):
        """Packs VMs: the host with the least free memory first."""

        name = "SmallestFirst"

        def order(self, hosts: list[Any], spec: Any) -> list[Any]:
            return sorted(hosts, key=lambda h: h.available_memory)

    class Plugin:
        @hookimpl
        def zstack_host_allocator_strategies(self) -> list[HostAllocatorStrategy]:
            return [SmallestFirst()]

    node = await start_node(isolated_env, plugins=[Plugin()])
    try:
        cloud = await make_cloud(node)  # test:///default: 3 GiB
        big = (await cloud.call("AddKVMHost", name="big", clusterUuid=cloud.cluster.uuid,
                                url=driver_xml(cpus=8, memory_mib=8192))).inventory
        packing = (await cloud.call("CreateInstanceOffering", name="packed", cpuNum=1, memorySize=64 * MiB,
                                    allocatorStrategy="SmallestFirst")).inventory
        vm = (await cloud.call("CreateVmInstance", name="p", instanceOfferingUuid=packing.uuid)).inventory
        assert vm.host_uuid == cloud.host.uuid
        spread = await cloud.create_vm()  # default: the VM's last host if it fits, else the least used
        assert spread.host_uuid == big.uuid
        await cloud.call("StopVmInstance", uuid=spread.uuid)
        await cloud.call("UpdateResourceConfig", category="kvm", name="reservedMemory", resourceUuid=big.uuid,
                         value="7900M")  # the last host is now the fuller one, but the VM still fits there
        restarted = (await cloud.call("StartVmInstance", uuid=spread.uuid)).inventory
        assert restarted.host_uuid == big.uuid
    finally:
        await node.stop()


async def test_two_plugins_with_one_strategy_name_stop_the_start(isolated_env: Path) -> None:
    from zstack_core import NodeStartError
    from zstack_kvm.allocator import LeastUsedStrategy

    class Plugin:
        @hookimpl
        def zstack_host_allocator_strategies(self) -> list[Any]:
            return [LeastUsedStrategy()]

    with pytest.raises(NodeStartError, match="LeastUsedHostAllocatorStrategy"):  # clashes with compute's own
        await start_node(isolated_env, plugins=[Plugin()])


async def test_before_hooks_can_refuse_and_paused_vms_stop(isolated_env: Path) -> None:
    class Guard:
        @hookimpl
        def zstack_vm_before_destroy(self, vm: Any) -> None:
            if vm.name == "precious":
                raise ZStackError(spec_error("this VM is protected"))

    node = await start_node(isolated_env, plugins=[Guard()])
    try:
        cloud = await make_cloud(node)
        vm = await cloud.create_vm(name="precious")
        await expect_error("VM.1000", cloud.call("DestroyVmInstance", uuid=vm.uuid))
        assert (await cloud.vm(vm.uuid)).state == "Running" and len(await zstack_domains(cloud)) == 1
        await cloud.call("PauseVmInstance", uuid=vm.uuid)
        assert (await cloud.call("StopVmInstance", uuid=vm.uuid)).inventory.state == "Stopped"
        await cloud.call("DestroyVmInstance", uuid=vm.uuid, deleteMode="Enforcing")  # forced: no veto
        assert (await cloud.vm(vm.uuid)).state == "Destroyed"
    finally:
        await node.stop()
