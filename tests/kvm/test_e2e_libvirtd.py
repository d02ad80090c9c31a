"""End to end against a real libvirtd with QEMU (``qemu:///system``, the shared ``libvirtd``
fixture): a host's facts, a 64 MiB VM with no disk really running in QEMU through its whole
life, a VM killed outside the node, hot-plugging a disk, security-group rules in nftables, and
libvirtd restarted under a running node.

Every domain a test creates is named ``zstack-<vm uuid>``; the ``qemu_cloud`` fixture removes
those of its own VMs however the test ends.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from zstack_core.header import DiskTO, SecurityGroupRuleTO, VolumeInventory
from zstack_core.header.messages import VmAttachDiskMsg, VmDetachDiskMsg
from zstack_kvm.security_group import table_name

from .conftest import Cloud, make_cloud, start_node
from .test_hosts import wait_for
from .test_vms import domain_xml

pytestmark = pytest.mark.libvirtd

MiB = 1 << 20
URI = "qemu:///system"


def remove_domains(uuids: list[str]) -> None:
    """Remove what a test left on the shared libvirtd; a domain may be going away already (a
    restarted libvirtd reaps its QEMU processes), so every step tolerates that."""
    conn = libvirt.open(URI)
    try:
        for uuid in uuids:
            try:
                dom = conn.lookupByName(f"zstack-{uuid}")
            except libvirt.libvirtError:
                continue
            for step in (dom.destroy, dom.undefine):
                try:
                    step()
                except libvirt.libvirtError:
                    pass
    finally:
        conn.close()


def virsh(*args: str) -> str:
    result = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def virsh_state(name: str) -> str | None:
    """The state ``virsh list --all`` shows for ``name``, or None when it is not listed."""
    for line in virsh("list", "--all").splitlines()[2:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1] == name:
            return parts[2].strip()
    return None


def expected_domain_type() -> str:
    """``kvm`` when this libvirtd offers it for the host's architecture (it needs /dev/kvm), else
    ``qemu`` (TCG): read from the capabilities, as the node does."""
    conn = libvirt.open(URI)
    try:
        caps = ET.fromstring(conn.getCapabilities())
    finally:
        conn.close()
    arch = caps.findtext("./host/cpu/arch")
    for guest in caps.findall("guest"):
        a = guest.find("arch")
        if guest.findtext("os_type") == "hvm" and a is not None and a.get("name") == arch:
            if any(d.get("type") == "kvm" for d in a.findall("domain")):
                return "kvm"
    return "qemu"


@pytest.fixture
async def qemu_cloud(libvirtd: str, isolated_env: Path) -> AsyncIterator[Cloud]:
    node = await start_node(isolated_env)
    cloud: Cloud | None = None
    try:
        cloud = await make_cloud(node, url=libvirtd)
        yield cloud
    finally:
        uuids = [v.uuid for v in await node.query.find("VmInstance")]
        await node.stop()
        remove_domains(uuids)


async def test_qemu_host_facts(qemu_cloud: Cloud) -> None:
    cloud = qemu_cloud
    tags = await cloud.node.tags.tags(cloud.host.uuid)
    qemu_img = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout
    version = re.search(r"version\s+(\d+(?:\.\d+)+)", qemu_img)
    assert version and f"qemu-img::version::{version.group(1)}" in tags
    conn = libvirt.open(URI)
    try:
        lib, info = conn.getLibVersion(), conn.getInfo()
        caps = ET.fromstring(conn.getCapabilities())
    finally:
        conn.close()
    assert f"libvirt::version::{lib // 1_000_000}.{lib // 1000 % 1000}.{lib % 1000}" in tags
    flags = {f.get("name") for f in caps.findall("./host/cpu/feature")} & {"vmx", "svm"}
    assert {t for t in tags if t.startswith("hvm::")} == {f"hvm::{f}" for f in flags}
    host = await cloud.host_row()
    assert (host.status, host.cpu_num, host.total_memory) == ("Connected", info[2], info[1] * MiB)
    assert host.available_memory == host.total_memory - 512 * MiB


async def test_vm_lifecycle_really_runs_in_qemu(qemu_cloud: Cloud) -> None:
    cloud = qemu_cloud
    before = await cloud.host_row()
    vm = await cloud.create_vm(name="e2e", memory=64 * MiB)
    name = f"zstack-{vm.uuid}"
    assert vm.state == "Running" and virsh_state(name) == "running"
    dom = await domain_xml(cloud, vm.uuid)
    assert dom.type == expected_domain_type()
    if os.path.exists("/dev/kvm"):
        assert dom.type == "kvm"
    assert (dom.memory_kib, dom.vcpu, dom.disks, dom.interfaces) == (64 * 1024, 1, (), ())
    row = await cloud.host_row()
    assert (row.available_cpu, row.available_memory) == (before.available_cpu - 1, before.available_memory - 64 * MiB)

    console = await cloud.call("GetVmConsoleAddress", uuid=vm.uuid)
    assert (console.protocol, console.host_ip) == ("vnc", "127.0.0.1") and console.port >= 5900
    reader, writer = await asyncio.wait_for(asyncio.open_connection(console.host_ip, console.port), 10)
    banner = await asyncio.wait_for(reader.readexactly(12), 10)
    writer.close()
    assert banner.startswith(b"RFB ")  # a real VNC server (QEMU's) answers

    async def do(api: str, **kw: Any) -> str:
        return (await cloud.call(api, uuid=vm.uuid, **kw)).inventory.state  # type: ignore[no-any-return]

    assert await do("StopVmInstance") == "Stopped"  # no guest OS: ACPI is ignored, destroyed after the timeout
    assert virsh_state(name) is None  # stopped VMs keep no definition
    assert await do("StartVmInstance") == "Running" and virsh_state(name) == "running"
    assert await do("RebootVmInstance") == "Running" and virsh_state(name) == "running"
    assert await do("PauseVmInstance") == "Paused" and virsh_state(name) == "paused"
    assert await do("ResumeVmInstance") == "Running" and virsh_state(name) == "running"
    assert await do("StopVmInstance", type="cold") == "Stopped" and virsh_state(name) is None
    assert await do("StartVmInstance") == "Running" and virsh_state(name) == "running"
    assert await do("DestroyVmInstance") == "Destroyed" and virsh_state(name) is None
    assert (await cloud.call("ExpungeVmInstance", uuid=vm.uuid)).inventory is None
    assert virsh_state(name) is None and await cloud.node.query.find("VmInstance") == []
    row = await cloud.host_row()
    assert (row.available_cpu, row.available_memory) == (before.available_cpu, before.available_memory)


async def test_vm_destroyed_with_virsh_is_seen_stopped(qemu_cloud: Cloud) -> None:
    cloud = qemu_cloud
    before = await cloud.host_row()
    vm = await cloud.create_vm(memory=64 * MiB)
    virsh("destroy", f"zstack-{vm.uuid}")

    async def stopped() -> bool:
        return bool((await cloud.vm(vm.uuid)).state == "Stopped")

    await wait_for(stopped, timeout=20, what="the VM seen Stopped")
    assert virsh_state(f"zstack-{vm.uuid}") is None
    row = await cloud.host_row()
    assert row.available_memory == before.available_memory
    assert (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory.state == "Running"


async def test_hot_plug_disks_into_a_running_vm(qemu_cloud: Cloud) -> None:
    """A virtio disk and a USB disk go in live. Unplugging the virtio one needs the guest's
    cooperation (ACPI PCI hot-unplug), which a VM without an OS never gives; a USB disk leaves at
    once, so that one shows detaching."""
    cloud = qemu_cloud
    vm = await cloud.create_vm(memory=64 * MiB)
    workdir = Path(tempfile.mkdtemp(prefix="zstack-kvm-e2e-"))
    try:
        workdir.chmod(0o755)  # QEMU runs as libvirt-qemu and must reach the files
        disks = []
        for i, bus in enumerate(("virtio", "usb")):
            image = workdir / f"data{i}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
            volume = VolumeInventory(uuid=f"{i}" * 32, name=f"data{i}", type="Data", size=16 * MiB)
            disk = DiskTO(volume_uuid=volume.uuid, path=str(image), device_id=1 if bus == "virtio" else 0, bus=bus)
            await cloud.node.bus.call_ok(VmAttachDiskMsg(vm_instance_uuid=vm.uuid, volume=volume, disk=disk))
            disks.append((volume, disk))
        live = (await domain_xml(cloud, vm.uuid)).disks
        assert sorted((d.target_dev, d.target_bus, d.serial) for d in live) == [
            ("sda", "usb", "1" * 32), ("vdb", "virtio", "0" * 32)]
        volume, disk = disks[1]
        await cloud.node.bus.call_ok(VmDetachDiskMsg(vm_instance_uuid=vm.uuid, volume=volume, disk=disk))

        async def unplugged() -> bool:
            return [d.target_dev for d in (await domain_xml(cloud, vm.uuid)).disks] == ["vdb"]

        await wait_for(unplugged, timeout=20, what="the USB disk unplugged")
    finally:
        await cloud.call("StopVmInstance", uuid=vm.uuid, type="cold")
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()


async def test_security_group_rules_are_loaded_into_nftables(qemu_cloud: Cloud) -> None:
    cloud = qemu_cloud
    backend: Any = next(b for b in cloud.node.extension("security_group_backends") if b.hypervisor_type == "KVM")
    host = await cloud.host_row()
    vm_uuid = "e2e0" + "0" * 28
    rules = [SecurityGroupRuleTO(nic_uuid="n", mac="52:54:00:aa:00:01", direction="ingress", protocol="tcp",
                                 start_port=22, end_port=22, cidr="10.0.0.0/8")]
    name = table_name(vm_uuid)
    try:
        await backend.apply_rules(host, vm_uuid, rules)
        listed = subprocess.run(["nft", "list", "table", "bridge", name], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        assert "ip saddr 10.0.0.0/8" in listed.stdout and "tcp dport 22 accept" in listed.stdout
        await backend.apply_rules(host, vm_uuid, rules)  # applying again replaces, never duplicates
        listed = subprocess.run(["nft", "list", "table", "bridge", name], capture_output=True, text=True)
        assert listed.stdout.count("tcp dport 22 accept") == 1
    finally:
        await backend.cleanup(host, vm_uuid)
    assert subprocess.run(["nft", "list", "table", "bridge", name], capture_output=True).returncode != 0


def _libvirtd_pid() -> int | None:
    for path in ("/run/libvirtd.pid", "/var/run/libvirtd.pid"):
        try:
            pid = int(Path(path).read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            continue
    return None


async def test_libvirtd_restart_while_the_node_runs(qemu_cloud: Cloud) -> None:
    cloud = qemu_cloud
    pid = _libvirtd_pid()
    if pid is None:
        pytest.skip("libvirtd was not started with a pid file here; cannot restart it")
    vm = await cloud.create_vm(memory=64 * MiB)

    async def host_status(status: str) -> bool:
        return bool((await cloud.host_row()).status == status)

    async def vm_state(state: str) -> bool:
        return bool((await cloud.vm(vm.uuid)).state == state)

    os.kill(pid, signal.SIGTERM)
    try:
        await wait_for(lambda: host_status("Disconnected"), timeout=30, what="Disconnected")
        await wait_for(lambda: vm_state("Unknown"), timeout=10, what="VM Unknown")
    finally:
        for _ in range(100):  # the old daemon must be gone before a new one can take the socket
            try:
                os.kill(pid, 0)
            except OSError:
                break
            await asyncio.sleep(0.1)
        subprocess.run(["libvirtd", "-d"], check=True)
        for _ in range(100):
            if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode == 0:
                break
            await asyncio.sleep(0.1)
    await wait_for(lambda: host_status("Connected"), timeout=30, what="reconnected")
    await wait_for(lambda: vm_state("Running"), timeout=30, what="VM Running again")
    assert virsh_state(f"zstack-{vm.uuid}") == "running"  # QEMU kept running without libvirtd


async def test_migration_that_libvirt_refuses_and_maintenance_that_falls_back_to_stop(
        libvirtd: str, isolated_env: Path) -> None:
    """Two host records for this one libvirtd (through its default socket and through the same
    socket named in the URI): libvirt refuses to migrate a guest to the host it runs on, which
    exercises a real failed migration (hooks, the destination's reservation given back) and a
    maintenance that stops the VM it cannot move. (A successful live migration needs two
    libvirtds on two machines; that is not possible here.)"""
    from zstack_core import ZStackError, hookimpl

    calls: list[tuple[str, str]] = []

    class Watcher:
        @hookimpl
        def zstack_vm_before_migrate(self, vm: Any, destination_host_uuid: str) -> None:
            calls.append(("before", destination_host_uuid))

        @hookimpl
        def zstack_vm_after_migrate(self, vm: Any, source_host_uuid: str) -> None:
            calls.append(("after", source_host_uuid))  # never reached here: libvirt refuses

        @hookimpl
        def zstack_vm_failed_to_migrate(self, vm: Any, destination_host_uuid: str, error: Any) -> None:
            calls.append(("failed", error.code))

    node = await start_node(isolated_env, plugins=[Watcher()])
    uuids: list[str] = []
    try:
        cloud = await make_cloud(node, url=libvirtd)
        twin = (await cloud.call("AddKVMHost", name="twin", clusterUuid=cloud.cluster.uuid,
                                 url="qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock")).inventory
        vm = await cloud.create_vm(memory=64 * MiB, hostUuid=cloud.host.uuid)
        uuids.append(vm.uuid)
        twin_before = await cloud.host_row(twin.uuid)
        with pytest.raises(ZStackError) as info:
            await cloud.call("MigrateVm", vmInstanceUuid=vm.uuid, hostUuid=twin.uuid)
        assert info.value.code == "HOST.1008"
        assert calls == [("before", twin.uuid), ("failed", "HOST.1008")]
        row = await cloud.vm(vm.uuid)
        assert (row.state, row.host_uuid) == ("Running", cloud.host.uuid)
        assert virsh_state(f"zstack-{vm.uuid}") == "running"
        twin_after = await cloud.host_row(twin.uuid)
        assert twin_after.available_memory == twin_before.available_memory  # the reservation came back

        host = (await cloud.call("ChangeHostState", uuid=cloud.host.uuid, stateEvent="maintain")).inventory
        assert host.state == "Maintenance"
        assert (await cloud.vm(vm.uuid)).state == "Stopped" and virsh_state(f"zstack-{vm.uuid}") is None
        started = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory
        assert started.host_uuid == twin.uuid  # the host in maintenance takes no VM
    finally:
        await node.stop()
        remove_domains(uuids)
