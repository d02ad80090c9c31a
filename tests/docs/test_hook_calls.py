"""Extension points no other test covered, each shown called at the right time by the service
that owns the work: a test plugin implements the hook, records what it saw, and (for hooks that
may refuse) refuses, and the test checks what the node did. Everything runs on real nodes with
compute, storage and network on the libvirt test driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from zstack_core import ErrorCodeSpace, ManagementNode, hookimpl
from zstack_core.header import ConsoleAddress, HostReservedCapacity, VmInstanceSpec
from zstack_core.header.backends import ConsoleBackend, HypervisorFactory, PrimaryStorageFactory
from zstack_core.header.messages import HostRunMsg, HostRunReply
from zstack_core.plugins import PluginManager
from zstack_core.testing import EnvSpec, NodeFactory, api, assert_error, build_env, private_test_driver

pytest_plugins = ["zstack_core.testing"]

Probe = ErrorCodeSpace(prefix="PROBE", codes={"1000": "refused by the probe plugin", "1001": "probe device failed"})


class ProbePlugin:
    """Records every call of the hooks below as ``(hook, facts)``; refuses the hooks in
    ``refuse``; ``fail_devices`` makes the VM's hypervisor definition fail."""

    def __init__(self, node_ref: list[ManagementNode] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse: set[str] = set()
        self.fail_devices = False
        self.reserved_memory = 0
        self.node_ref = node_ref if node_ref is not None else []

    def saw(self, hook: str, **facts: Any) -> None:
        self.calls.append((hook, facts))
        if hook in self.refuse:
            raise Probe.exc("1000", f"{hook} refused")

    def hooks(self) -> list[str]:
        return [hook for hook, _ in self.calls]

    def facts(self, hook: str) -> list[dict[str, Any]]:
        return [facts for h, facts in self.calls if h == hook]

    @hookimpl
    def zstack_error_codes(self) -> Sequence[ErrorCodeSpace]:
        return [Probe]

    # -- hosts --------------------------------------------------------------------------------

    @hookimpl
    def zstack_host_before_add(self, host: Any) -> None:
        self.saw("zstack_host_before_add", name=host.name, url=host.management_url, status=host.status)

    @hookimpl
    def zstack_host_reserved_capacity(self, host: Any) -> HostReservedCapacity | None:
        self.saw("zstack_host_reserved_capacity", uuid=host.uuid)
        return HostReservedCapacity(reserved_memory=self.reserved_memory) if self.reserved_memory else None

    @hookimpl
    def zstack_host_before_delete(self, host: Any) -> None:
        self.saw("zstack_host_before_delete", uuid=host.uuid)

    @hookimpl
    def zstack_host_after_delete(self, host: Any) -> None:
        self.saw("zstack_host_after_delete", uuid=host.uuid)

    # -- VM creation ------------------------------------------------------------------------------

    @hookimpl
    async def zstack_vm_before_instantiate_resource(self, spec: VmInstanceSpec) -> None:
        host = spec.destination_host
        exists = await domain_exists(self.node_ref[0], host.uuid, spec.vm.uuid) if host else None
        self.saw("zstack_vm_before_instantiate_resource", vm=spec.vm.uuid, host=host and host.uuid,
                 volumes=[v.type for v in ([spec.root_volume] if spec.root_volume else [])],
                 nics=len(spec.nics), domain_exists=exists)

    @hookimpl
    async def zstack_vm_after_instantiate_resource(self, spec: VmInstanceSpec) -> None:
        host = spec.destination_host
        assert host is not None
        self.saw("zstack_vm_after_instantiate_resource", vm=spec.vm.uuid,
                 domain_exists=await domain_exists(self.node_ref[0], host.uuid, spec.vm.uuid))

    @hookimpl
    def zstack_vm_release_resource(self, spec: VmInstanceSpec, reason: str) -> None:
        self.saw("zstack_vm_release_resource", vm=spec.vm.uuid, reason=reason)

    @hookimpl
    def zstack_vm_domain_devices(self, spec: VmInstanceSpec) -> None:
        if self.fail_devices:
            raise Probe.exc("1001", f"no probe device for VM {spec.vm.uuid}")

    # -- VM lifecycle failures --------------------------------------------------------------------

    @hookimpl
    def zstack_vm_failed_to_start(self, vm: Any, error: Any) -> None:
        self.saw("zstack_vm_failed_to_start", vm=vm.uuid, state=vm.state, code=error.code)

    @hookimpl
    def zstack_vm_failed_to_reboot(self, vm: Any, error: Any) -> None:
        self.saw("zstack_vm_failed_to_reboot", vm=vm.uuid, state=vm.state, code=error.code)

    @hookimpl
    def zstack_vm_failed_to_stop(self, vm: Any, error: Any) -> None:
        self.saw("zstack_vm_failed_to_stop", vm=vm.uuid, state=vm.state, code=error.code)

    @hookimpl
    def zstack_vm_failed_to_destroy(self, vm: Any, error: Any) -> None:
        self.saw("zstack_vm_failed_to_destroy", vm=vm.uuid, state=vm.state, code=error.code)

    # -- devices ----------------------------------------------------------------------------------

    @hookimpl
    def zstack_vm_before_attach_nic(self, vm: Any, nic: Any) -> None:
        self.saw("zstack_vm_before_attach_nic", vm=vm.uuid, l3=nic.l3_network_uuid)

    @hookimpl
    def zstack_vm_after_attach_nic(self, vm: Any, nic: Any) -> None:
        self.saw("zstack_vm_after_attach_nic", vm=vm.uuid, l3=nic.l3_network_uuid, ip=nic.ip)

    @hookimpl
    def zstack_vm_before_detach_nic(self, vm: Any, nic: Any) -> None:
        self.saw("zstack_vm_before_detach_nic", vm=vm.uuid, nic=nic.uuid)

    @hookimpl
    def zstack_vm_after_detach_nic(self, vm: Any, nic: Any) -> None:
        self.saw("zstack_vm_after_detach_nic", vm=vm.uuid, nic=nic.uuid)

    @hookimpl
    def zstack_vm_before_attach_volume(self, vm: Any, volume: Any) -> None:
        self.saw("zstack_vm_before_attach_volume", vm=vm.uuid, volume=volume.uuid)

    @hookimpl
    def zstack_vm_before_detach_volume(self, vm: Any, volume: Any) -> None:
        self.saw("zstack_vm_before_detach_volume", vm=vm.uuid, volume=volume.uuid)

    @hookimpl
    def zstack_vm_after_detach_volume(self, vm: Any, volume: Any) -> None:
        self.saw("zstack_vm_after_detach_volume", vm=vm.uuid, volume=volume.uuid)


async def domain_exists(node: ManagementNode, host_uuid: str, vm_uuid: str) -> bool:
    """Whether the VM's domain is defined on its host, asked through compute's HostRunMsg."""

    def look(conn: Any) -> bool:
        names = set(conn.listDefinedDomains()) | {conn.lookupByID(i).name() for i in conn.listDomainsID()}
        return any(vm_uuid in name for name in names)

    reply = await node.bus.call(HostRunMsg(host_uuid=host_uuid, fn=look))
    assert isinstance(reply, HostRunReply), reply
    return bool(reply.result)


async def probe_node(make_node: NodeFactory, *plugins: str) -> tuple[ManagementNode, ProbePlugin]:
    probe = ProbePlugin()
    node = await make_node(plugins=[*plugins, probe])
    probe.node_ref.append(node)
    return node, probe


async def count(node: ManagementNode, resource: str) -> int:
    return len((await api(node, f"Query{resource}")).inventories)


# -- hosts ------------------------------------------------------------------------------------------


async def test_host_before_add_sees_the_host_first_and_may_refuse_it(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm")
    env = await build_env(node, EnvSpec().zone().cluster())
    probe.refuse.add("zstack_host_before_add")
    await assert_error("PROBE.1000", api(node, "AddKVMHost", name="h1", cluster_uuid=env.cluster.uuid,
                                         url="test:///default"))
    assert await count(node, "Host") == 0  # refused: nothing was added
    assert probe.facts("zstack_host_before_add") == [{"name": "h1", "url": "test:///default", "status": "Connecting"}]
    assert "zstack_host_reserved_capacity" not in probe.hooks()  # it never got to connect

    probe.refuse.clear()
    host = (await api(node, "AddKVMHost", name="h1", cluster_uuid=env.cluster.uuid, url="test:///default")).inventory
    assert host.status == "Connected"
    hooks = probe.hooks()
    assert hooks.index("zstack_host_before_add", 1) < hooks.index("zstack_host_reserved_capacity")


async def test_host_reserved_capacity_is_held_back_from_the_host(make_node: NodeFactory, tmp_path: Path) -> None:
    node, probe = await probe_node(make_node, "kvm")
    env = await build_env(node, EnvSpec().zone().cluster().host("plain", url=private_test_driver(tmp_path / "a.xml")))
    probe.reserved_memory = 256 << 20
    reserved = (await api(node, "AddKVMHost", name="reserved", cluster_uuid=env.cluster.uuid,
                          url=private_test_driver(tmp_path / "b.xml"))).inventory
    # The kernel's kvm/reservedMemory applies to both; the probe's 256 MiB only to the second.
    assert env.plain.total_memory == reserved.total_memory
    assert env.plain.available_memory - reserved.available_memory == 256 << 20
    assert {"uuid": reserved.uuid} in probe.facts("zstack_host_reserved_capacity")


async def test_host_before_delete_may_refuse_and_comes_before_after_delete(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm")
    env = await build_env(node, EnvSpec().zone().cluster().host())
    probe.refuse.add("zstack_host_before_delete")
    await assert_error("PROBE.1000", api(node, "DeleteHost", uuid=env.host.uuid))
    assert await count(node, "Host") == 1
    assert "zstack_host_after_delete" not in probe.hooks()

    probe.refuse.clear()
    await api(node, "DeleteHost", uuid=env.host.uuid)
    assert await count(node, "Host") == 0
    assert probe.hooks()[-2:] == ["zstack_host_before_delete", "zstack_host_after_delete"]


# -- VM creation -------------------------------------------------------------------------------------


def full_env() -> EnvSpec:
    return EnvSpec().zone().cluster().host().primary_storage().l2_network().l3_network().image()


async def test_instantiate_resource_hooks_bracket_the_hypervisor(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm", "storage", "network")
    env = await build_env(node, full_env().vm())
    [before] = probe.facts("zstack_vm_before_instantiate_resource")
    [after] = probe.facts("zstack_vm_after_instantiate_resource")
    # Before: host, root volume and NIC are allocated, nothing is on the hypervisor yet.
    assert before == {"vm": env.vm.uuid, "host": env.host.uuid, "volumes": ["Root"], "nics": 1, "domain_exists": False}
    # After: the domain exists.
    assert after == {"vm": env.vm.uuid, "domain_exists": True}
    assert "zstack_vm_release_resource" not in probe.hooks()


async def test_a_refused_instantiate_rolls_the_create_back(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm", "storage", "network")
    env = await build_env(node, full_env())
    probe.refuse.add("zstack_vm_before_instantiate_resource")
    await assert_error("VM", api(node, "CreateVmInstance", name="vm", cpu_num=1, memory_size=64 << 20,
                                 image_uuid=env.image.uuid, l3_network_uuids=[env.l3.uuid]),
                       caused_by="PROBE.1000")
    [release] = probe.facts("zstack_vm_release_resource")
    assert release["reason"] == "rollback"
    assert "zstack_vm_after_instantiate_resource" not in probe.hooks()
    assert await count(node, "VmInstance") == 0
    assert await count(node, "Volume") == 0  # the root volume was given back
    [host] = (await api(node, "QueryHost")).inventories
    assert host.available_memory == env.host.available_memory  # and the host's memory


# -- VM lifecycle failures ---------------------------------------------------------------------------


async def test_failed_to_start_and_failed_to_reboot_hear_a_failed_definition(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm")
    env = await build_env(node, EnvSpec().zone().cluster().host().vm(image=None, l3_networks=()))
    vm = env.vm.uuid

    probe.fail_devices = True  # another plugin's device cannot be added: the domain cannot be defined
    await assert_error("PROBE.1001", api(node, "RebootVmInstance", uuid=vm))
    # Powered off for the reboot, and not started again.
    assert probe.facts("zstack_vm_failed_to_reboot") == [{"vm": vm, "state": "Stopped", "code": "PROBE.1001"}]

    await assert_error("PROBE.1001", api(node, "StartVmInstance", uuid=vm))
    [starting] = probe.facts("zstack_vm_failed_to_start")
    assert starting == {"vm": vm, "state": "Stopped", "code": "PROBE.1001"}

    probe.fail_devices = False
    assert (await api(node, "StartVmInstance", uuid=vm)).inventory.state == "Running"


async def wait_for(node: ManagementNode, resource: str, uuid: str, field: str, value: str) -> None:
    for _ in range(400):
        [inv] = (await api(node, f"Query{resource}", conditions=[{"name": "uuid", "op": "=", "value": uuid}])).inventories
        if getattr(inv, field) == value:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{resource} {uuid} never became {field}={value}")


async def test_failed_to_stop_and_failed_to_destroy_hear_an_unreachable_host(make_node: NodeFactory,
                                                                            tmp_path: Path) -> None:
    node, probe = await probe_node(make_node, "kvm")
    driver = tmp_path / "host.xml"
    env = await build_env(node, EnvSpec().zone().cluster().host(url=private_test_driver(driver))
                          .vm(image=None, l3_networks=()))
    vm, host = env.vm.uuid, env.host.uuid
    # The host goes away for good (a crashed libvirtd that does not come back): its definition
    # is gone, so reconnecting fails, and compute's connection to it is closed.
    await api(node, "UpdateGlobalConfig", category="kvm", name="host.pingInterval", value=0.05)
    driver.unlink()
    reply = await node.bus.call(HostRunMsg(host_uuid=host, fn=lambda conn: conn.close()))
    assert reply.error is None, reply.error
    await wait_for(node, "Host", host, "status", "Disconnected")
    await wait_for(node, "VmInstance", vm, "state", "Unknown")

    await assert_error("VM", api(node, "StopVmInstance", uuid=vm), caused_by="HOST")
    [stopping] = probe.facts("zstack_vm_failed_to_stop")
    assert stopping["vm"] == vm and stopping["state"] == "Unknown" and stopping["code"].startswith("HOST.")

    await assert_error("HOST", api(node, "DestroyVmInstance", uuid=vm))
    [destroying] = probe.facts("zstack_vm_failed_to_destroy")
    assert destroying["vm"] == vm and destroying["state"] == "Unknown" and destroying["code"].startswith("HOST.")
    # Neither pretended to succeed.
    [again] = (await api(node, "QueryVmInstance")).inventories
    assert again.state == "Unknown"


# -- devices on a stopped VM (the test driver has no hot-plug) ---------------------------------------


async def test_nic_hooks_around_attach_and_detach(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm", "storage", "network")
    env = await build_env(node, full_env().l3_network("l3b", cidr="10.9.0.0/24").vm())
    vm = env.vm.uuid
    await api(node, "StopVmInstance", uuid=vm)

    probe.refuse.add("zstack_vm_before_attach_nic")
    await assert_error("PROBE.1000", api(node, "AttachL3NetworkToVm", vm_instance_uuid=vm, l3_network_uuid=env.l3b.uuid))
    [only] = (await api(node, "QueryVmInstance")).inventories
    assert len(only.vm_nics) == 1  # refused: no NIC, and its IP went back

    probe.refuse.clear()
    reply = await api(node, "AttachL3NetworkToVm", vm_instance_uuid=vm, l3_network_uuid=env.l3b.uuid)
    [after] = probe.facts("zstack_vm_after_attach_nic")
    assert after["vm"] == vm and after["l3"] == env.l3b.uuid and after["ip"].startswith("10.9.0.")
    assert probe.facts("zstack_vm_before_attach_nic") == [{"vm": vm, "l3": env.l3b.uuid}] * 2

    [nic] = [n for n in reply.inventory.vm_nics if n.l3_network_uuid == env.l3b.uuid]
    await api(node, "DetachL3NetworkFromVm", vm_nic_uuid=nic.uuid)
    assert probe.hooks()[-2:] == ["zstack_vm_before_detach_nic", "zstack_vm_after_detach_nic"]
    assert probe.facts("zstack_vm_after_detach_nic") == [{"vm": vm, "nic": nic.uuid}]


async def test_volume_hooks_around_attach_and_detach(make_node: NodeFactory) -> None:
    node, probe = await probe_node(make_node, "kvm", "storage", "network")
    env = await build_env(node, full_env().vm())
    vm = env.vm.uuid
    await api(node, "StopVmInstance", uuid=vm)
    volume = (await api(node, "CreateDataVolume", name="data", disk_size=16 << 20)).inventory

    probe.refuse.add("zstack_vm_before_attach_volume")
    await assert_error("PROBE.1000", api(node, "AttachDataVolumeToVm", volume_uuid=volume.uuid, vm_instance_uuid=vm))
    [data] = (await api(node, "QueryVolume", conditions=[{"name": "uuid", "op": "=", "value": volume.uuid}])).inventories
    assert data.vm_instance_uuid is None

    probe.refuse.clear()
    await api(node, "AttachDataVolumeToVm", volume_uuid=volume.uuid, vm_instance_uuid=vm)
    await api(node, "DetachDataVolumeFromVm", uuid=volume.uuid)
    hooks = [h for h in probe.hooks() if "volume" in h]
    assert hooks == ["zstack_vm_before_attach_volume", "zstack_vm_before_attach_volume",
                     "zstack_vm_before_detach_volume", "zstack_vm_after_detach_volume"]
    assert probe.facts("zstack_vm_after_detach_volume") == [{"vm": vm, "volume": volume.uuid}]


def test_the_probe_implements_only_real_hooks() -> None:
    manager = PluginManager()
    manager.register(ProbePlugin(), "probe")
    manager.validate()  # a hook name with a typo would raise PluginError
    assert len(manager.infos["probe"].hooks) >= 20


# -- backends registered through hooks, found by type --------------------------------------------


class ProbeVisor(HypervisorFactory):
    hypervisor_type = "ProbeVisor"


class ProbeConsole(ConsoleBackend):
    """A console backend for KVM hosts, registered after zstack-kvm's: pluggy calls the last
    registered plugin first, so it is the one compute asks."""

    hypervisor_type = "KVM"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def console_address(self, vm: Any, host: Any) -> ConsoleAddress:
        self.asked.append((vm.uuid, host.uuid))
        return ConsoleAddress(protocol="vnc", hostname="console.probe", port=5999)


class LocalStorageProbe(PrimaryStorageFactory):
    """Stands in front of zstack-storage's own ``LocalStorage`` factory, recording what the
    storage service asks of the type and passing it on."""

    type = "LocalStorage"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def behind(self, node: ManagementNode) -> PrimaryStorageFactory:
        return next(f for f in node.extension("primary_storage_factories") if f.type == self.type and f is not self)

    async def attach_to_host(self, node: ManagementNode, ps: Any, host: Any) -> Any:
        self.calls.append(("attach_to_host", ps.uuid, host.uuid))
        return await self.behind(node).attach_to_host(node, ps, host)

    async def detach_from_host(self, node: ManagementNode, ps: Any, host: Any) -> None:
        self.calls.append(("detach_from_host", ps.uuid, host.uuid))
        await self.behind(node).detach_from_host(node, ps, host)

    # The rest only pass on (the type must implement every method of the contract).
    async def create_image_cache(self, node: ManagementNode, ps: Any, host: Any, image: Any, source_path: str) -> Any:
        return await self.behind(node).create_image_cache(node, ps, host, image, source_path)

    async def create_volume(self, node: ManagementNode, ps: Any, host: Any, volume: Any, backing: Any) -> Any:
        return await self.behind(node).create_volume(node, ps, host, volume, backing)

    async def delete_volume(self, node: ManagementNode, ps: Any, host: Any, install_path: str) -> None:
        await self.behind(node).delete_volume(node, ps, host, install_path)

    async def resize_volume(self, node: ManagementNode, ps: Any, host: Any, volume: Any, size: int) -> Any:
        return await self.behind(node).resize_volume(node, ps, host, volume, size)

    async def snapshot(self, node: ManagementNode, ps: Any, host: Any, volume: Any, action: str, name: str) -> None:
        await self.behind(node).snapshot(node, ps, host, volume, action, name)

    def disk_to(self, volume: Any) -> Any:
        raise AssertionError("disk_to needs the node to find the factory behind; not called in this test")


class BackendsPlugin:
    def __init__(self) -> None:
        self.console = ProbeConsole()
        self.storage = LocalStorageProbe()

    @hookimpl
    def zstack_hypervisor_factories(self) -> Sequence[HypervisorFactory]:
        return [ProbeVisor()]

    @hookimpl
    def zstack_console_backends(self) -> Sequence[ConsoleBackend]:
        return [self.console]

    @hookimpl
    def zstack_primary_storage_factories(self) -> Sequence[PrimaryStorageFactory]:
        return [self.storage]


async def test_hypervisor_factories_are_the_types_a_cluster_may_have(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["kvm"])
    zone = (await api(node, "CreateZone", name="z")).inventory
    error = await assert_error("CLUSTER", api(node, "CreateCluster", name="c", zone_uuid=zone.uuid,
                                              hypervisor_type="ProbeVisor"))
    assert "known: KVM" in error.details

    node = await make_node(plugins=["kvm", BackendsPlugin()])
    zone = (await api(node, "CreateZone", name="z")).inventory
    cluster = (await api(node, "CreateCluster", name="c", zone_uuid=zone.uuid, hypervisor_type="ProbeVisor")).inventory
    assert cluster.hypervisor_type == "ProbeVisor"


async def test_console_backends_answer_console_addresses_by_hypervisor_type(make_node: NodeFactory) -> None:
    plugin = BackendsPlugin()
    node = await make_node(plugins=["kvm", plugin])
    env = await build_env(node, EnvSpec().zone().cluster().host().vm(image=None, l3_networks=()))
    reply = await api(node, "GetVmConsoleAddress", uuid=env.vm.uuid)
    assert (reply.protocol, reply.host_ip, reply.port) == ("vnc", "console.probe", 5999)
    assert plugin.console.asked == [(env.vm.uuid, env.host.uuid)]
    # A stopped VM has no console: compute refuses before asking any backend.
    await api(node, "StopVmInstance", uuid=env.vm.uuid)
    await assert_error("VM", api(node, "GetVmConsoleAddress", uuid=env.vm.uuid))
    assert len(plugin.console.asked) == 1


async def test_primary_storage_factories_do_the_work_on_hosts(make_node: NodeFactory) -> None:
    plugin = BackendsPlugin()
    node = await make_node(plugins=["kvm", "storage", plugin])
    env = await build_env(node, EnvSpec().zone().cluster().host().primary_storage())
    ps, host = env.primary_storage.uuid, env.host.uuid
    assert plugin.storage.calls == [("attach_to_host", ps, host)]
    # The factory made the storage usable on the host: a libvirt pool of its own is there.
    reply = await node.bus.call(HostRunMsg(host_uuid=host, fn=lambda conn: conn.listStoragePools()))
    assert any(name.startswith(f"zs-{ps[:8]}") for name in reply.result), reply.result

    await api(node, "DetachPrimaryStorageFromCluster", primary_storage_uuid=ps, cluster_uuid=env.cluster.uuid)
    assert plugin.storage.calls[-1] == ("detach_from_host", ps, host)
