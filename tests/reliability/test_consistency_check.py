"""The consistency checker (``zstack check``) finds every kind of disagreement it names.

A cloud on a private test-driver host is built through the public APIs and checked clean; then
one inconsistency at a time is made the way a crash or a bug would leave it (straight in the
database, or straight on the host through ``HostRunMsg``, behind the services' backs), and the
checker must report exactly that kind for that resource. Also: the Python API, the
``CheckConsistency`` API (admin only), ``zstack check`` online and offline with its exit status,
a third-party plugin's own check through ``zstack_consistency_checks``, and a check that raises.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from zstack_core import ManagementNode, hookimpl
from zstack_core.check import CheckContext, ConsistencyCheck, Finding, check
from zstack_core.header.messages import HostRunMsg
from zstack_core.ownership import AccountResourceRefVO
from zstack_kvm.models import HostVO, VmInstanceVO
from zstack_network.models import UsedIpVO, VmNicVO
from zstack_storage import local_storage
from zstack_storage.models import ImageCacheVO, ImageVO, LocalStorageHostRefVO, PrimaryStorageVO, VolumeVO

from .conftest import ADMIN_PASSWORD, Cloud, cloud_spec, driver_xml, start_cloud_node

ALL_CHECKS = ["core.ownership", "kvm.capacity", "kvm.domains", "network.ips", "storage.capacity",
              "storage.leftovers", "storage.volumes"]


def test_domain_xml(uuid: str, name: str | None = None) -> str:
    return (f"<domain type='test'><name>{name or 'zstack-' + uuid}</name><uuid>{uuid}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='i686'>hvm</type></os></domain>")


test_domain_xml.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


async def on_host(cloud: Cloud, fn: Callable[[Any], Any]) -> Any:
    return (await cloud.node.bus.call_ok(HostRunMsg(host_uuid=cloud.env.host.uuid, fn=fn))).result


async def db(cloud: Cloud, fn: Callable[[], Any]) -> Any:
    return await cloud.node.db.atomic(fn)


async def quiet_sync(cloud: Cloud) -> None:
    """Stop the VM state sync's periodic passes, so an injected disagreement stays put."""
    await cloud.node.configs.update("kvm", "vm.syncInterval", 3600.0)
    await asyncio.sleep(0.2)  # the pass the change woke runs now, before the injection


async def test_a_cloud_built_through_the_apis_is_consistent(cloud: Cloud) -> None:
    vms = [await cloud.vm(), await cloud.vm(stopped=True), await cloud.vm(data_disk_sizes=[1 << 20]),
           await cloud.vm(image=False, l3=False)]
    await cloud.call("StopVmInstance", uuid=vms[0].uuid)
    await cloud.call("StartVmInstance", uuid=vms[0].uuid)
    await cloud.call("DestroyVmInstance", uuid=vms[3].uuid)
    await cloud.call("ExpungeVmInstance", uuid=vms[3].uuid)
    report = await check(cloud.node)
    assert report.ok, [str(f) for f in report.findings] + [str(f) for f in report.failures]
    assert report.checks == ALL_CHECKS
    assert report.hosts_checked == [cloud.env.host.uuid] and report.hosts_skipped == []
    assert "consistent" in report.summary()


# -- one injected inconsistency each ----------------------------------------------------------

Inject = Callable[[Cloud], Awaitable[tuple[str, str | None]]]
"""Makes one inconsistency; returns the finding kind and resource UUID expected."""


async def orphan_domain(cloud: Cloud) -> tuple[str, str | None]:
    dom_uuid = uuidlib.uuid4()
    await on_host(cloud, lambda c: c.createXML(test_domain_xml(str(dom_uuid)), 0))
    return "orphan-domain", dom_uuid.hex


async def stray_domain(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True)
    dashed = str(uuidlib.UUID(vm.uuid))
    # Running: a stopped leftover definition the VM sync removes by itself as soon as libvirt's
    # event tells it; a running domain of a Stopped VM it leaves for people to look at.
    await on_host(cloud, lambda c: c.createXML(test_domain_xml(dashed), 0))
    return "stray-domain", vm.uuid


async def missing_domain(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True)
    host = cloud.env.host.uuid

    def run_without_domain() -> None:  # placed and counted as compute would, but no domain
        VmInstanceVO.update(state="Running", host_uuid=host).where(VmInstanceVO.uuid == vm.uuid).execute()
        HostVO.update(available_cpu=HostVO.available_cpu - vm.cpu_num,
                      available_memory=HostVO.available_memory - vm.memory_size).where(HostVO.uuid == host).execute()

    await db(cloud, run_without_domain)
    return "missing-domain", vm.uuid


async def state_mismatch(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm()
    await asyncio.sleep(1.0)  # libvirt's events of the start reach the VM sync first
    await db(cloud, lambda: VmInstanceVO.update(state="Paused").where(VmInstanceVO.uuid == vm.uuid).execute())
    return "state-mismatch", vm.uuid


async def vm_stuck(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm()
    await asyncio.sleep(1.0)  # let libvirt's events of the start reach the VM sync first, as above
    await db(cloud, lambda: VmInstanceVO.update(state="Rebooting").where(VmInstanceVO.uuid == vm.uuid).execute())
    return "vm-stuck", vm.uuid


async def host_capacity_leak(cloud: Cloud) -> tuple[str, str | None]:
    host = cloud.env.host.uuid
    await db(cloud, lambda: HostVO.update(available_memory=HostVO.available_memory - (64 << 20)).where(
        HostVO.uuid == host).execute())
    return "capacity-mismatch", host


async def capacity_held_by_stopped_vm(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True)
    host = cloud.env.host.uuid

    def hold() -> None:
        VmInstanceVO.update(host_uuid=host).where(VmInstanceVO.uuid == vm.uuid).execute()
        HostVO.update(available_cpu=HostVO.available_cpu - 1,
                      available_memory=HostVO.available_memory - vm.memory_size).where(HostVO.uuid == host).execute()

    await db(cloud, hold)
    return "capacity-held", vm.uuid


async def orphan_volume_file(cloud: Cloud) -> tuple[str, str | None]:
    pool = local_storage.pool_name(cloud.env.primary_storage.uuid)
    await on_host(cloud, lambda c: local_storage.create_volume(c, pool, f"data-{uuidlib.uuid4().hex}.qcow2", 1 << 20))
    return "orphan-volume-file", cloud.env.primary_storage.uuid


async def missing_volume_file(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True, data_disk_sizes=[1 << 20])
    data = next(v for v in vm.all_volumes if v.type == "Data")
    await on_host(cloud, lambda c: local_storage.delete_volume(c, data.install_path))
    return "missing-volume-file", data.uuid


async def storage_capacity_leak(cloud: Cloud) -> tuple[str, str | None]:
    ps = cloud.env.primary_storage.uuid

    def leak() -> None:
        R = LocalStorageHostRefVO
        R.update(available_capacity=R.available_capacity - 4096).where(R.primary_storage_uuid == ps).execute()
        PrimaryStorageVO.update(available_capacity=PrimaryStorageVO.available_capacity - 4096).where(
            PrimaryStorageVO.uuid == ps).execute()

    await db(cloud, leak)
    return "capacity-mismatch", ps


async def volume_left_creating(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True, data_disk_sizes=[1 << 20])
    data = next(v for v in vm.all_volumes if v.type == "Data")
    await db(cloud, lambda: VolumeVO.update(status="Creating").where(VolumeVO.uuid == data.uuid).execute())
    return "volume-stuck-creating", data.uuid


async def image_cache_left_creating(cloud: Cloud) -> tuple[str, str | None]:
    await cloud.vm(stopped=True)  # caches the image on the host
    image = cloud.env.image.uuid
    await db(cloud, lambda: ImageCacheVO.update(status="Creating").where(ImageCacheVO.image_uuid == image).execute())
    return "partial-image-cache", image


async def image_left_downloading(cloud: Cloud) -> tuple[str, str | None]:
    image = cloud.env.image.uuid
    await db(cloud, lambda: ImageVO.update(status="Downloading").where(ImageVO.uuid == image).execute())
    return "partial-image-download", image


async def partial_download_file(cloud: Cloud) -> tuple[str, str | None]:
    store = cloud.node.services["storage"].image_dir()  # type: ignore[attr-defined]
    store.mkdir(parents=True, exist_ok=True)
    (store / f"{uuidlib.uuid4().hex}.part").write_bytes(b"half an image")
    return "partial-file", None


async def volume_of_missing_vm(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True, data_disk_sizes=[1 << 20])
    data = next(v for v in vm.all_volumes if v.type == "Data")
    await db(cloud, lambda: VolumeVO.update(vm_instance_uuid=uuidlib.uuid4().hex).where(
        VolumeVO.uuid == data.uuid).execute())
    return "volume-of-missing-vm", data.uuid


async def orphan_ip(cloud: Cloud) -> tuple[str, str | None]:
    row_uuid = uuidlib.uuid4().hex
    l3, rng = cloud.env.l3, cloud.env.l3_ip_range
    await db(cloud, lambda: UsedIpVO.insert(uuid=row_uuid, l3_network_uuid=l3.uuid, ip_range_uuid=rng.uuid,
                                            ip="10.20.0.200", ip_int=0x0A1400C8, vm_nic_uuid=None).execute())
    return "orphan-ip", row_uuid


async def nic_without_ip(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True)
    nic = vm.vm_nics[0]

    def drop_ip() -> None:
        UsedIpVO.delete().where(UsedIpVO.vm_nic_uuid == nic.uuid).execute()
        VmNicVO.update(used_ip_uuid=None, ip=None).where(VmNicVO.uuid == nic.uuid).execute()

    await db(cloud, drop_ip)
    return "nic-without-ip", nic.uuid


async def orphan_nic(cloud: Cloud) -> tuple[str, str | None]:
    vm = await cloud.vm(stopped=True, image=False)
    await db(cloud, lambda: VmInstanceVO.delete().where(VmInstanceVO.uuid == vm.uuid).execute())
    return "orphan-nic", vm.vm_nics[0].uuid


async def orphan_ownership(cloud: Cloud) -> tuple[str, str | None]:
    gone = uuidlib.uuid4().hex
    await db(cloud, lambda: AccountResourceRefVO.insert(resource_uuid=gone, resource_type="VmInstance",
                                                        account_uuid="0" * 32).execute())
    return "orphan-ownership", gone


INJECTIONS: list[Inject] = [
    orphan_domain, stray_domain, missing_domain, state_mismatch, vm_stuck, host_capacity_leak,
    capacity_held_by_stopped_vm, orphan_volume_file, missing_volume_file, storage_capacity_leak,
    volume_left_creating, image_cache_left_creating, image_left_downloading, partial_download_file,
    volume_of_missing_vm, orphan_ip, nic_without_ip, orphan_nic, orphan_ownership,
]


@pytest.mark.parametrize("inject", INJECTIONS, ids=[i.__name__ for i in INJECTIONS])
async def test_each_inconsistency_is_found(cloud: Cloud, inject: Inject) -> None:
    await quiet_sync(cloud)
    assert (await check(cloud.node)).ok
    kind, resource = await inject(cloud)
    report = await check(cloud.node)
    found = [f for f in report.findings if f.kind == kind]
    assert found, f"{kind} not found; the report: {[str(f) for f in report.findings]}"
    if resource is not None:
        assert resource in {f.resource_uuid for f in found}, [str(f) for f in found]
    assert all(f.plugin for f in report.findings)  # each says which plugin's check saw it
    assert not report.ok and kind in report.summary()
    confirmed = await check(cloud.node, confirm=True, confirm_delay=0.05)
    assert kind in {f.kind for f in confirmed.findings}  # a lasting disagreement survives confirmation


async def test_only_named_checks_run_and_unknown_names_are_refused(cloud: Cloud) -> None:
    await orphan_ip(cloud)
    report = await check(cloud.node, checks=["kvm.domains"])
    assert report.checks == ["kvm.domains"] and report.ok
    with pytest.raises(Exception) as info:
        await check(cloud.node, checks=["kvm.domain"])
    assert getattr(info.value, "code", "") == "SYS.1007" and "kvm.domains" in str(info.value)


async def test_a_disconnected_host_is_listed_as_not_compared(cloud: Cloud) -> None:
    host = cloud.env.host.uuid
    await cloud.node.configs.update("kvm", "host.pingInterval", 3600.0)
    await cloud.node.db.run(lambda: HostVO.update(status="Disconnected").where(HostVO.uuid == host).execute())
    report = await check(cloud.node)
    assert report.hosts_skipped == [host] and report.hosts_checked == []
    assert report.ok  # nothing it could compare disagrees; the skipped host is said, not hidden


# -- plugins contribute checks ----------------------------------------------------------------


class WidgetCheck(ConsistencyCheck):
    name = "widgets.count"
    description = "a third-party plugin's own check"

    def __init__(self) -> None:
        self.broken = False
        self.raises = False

    async def run(self, ctx: CheckContext) -> list[Finding]:
        if self.raises:
            raise RuntimeError("the widget check has a bug")
        hosts = await ctx.hosts()
        return [self.finding("widget-missing", "Host", h.uuid, "a widget is missing") for h in hosts if self.broken]


class WidgetPlugin:
    def __init__(self) -> None:
        self.check = WidgetCheck()

    @hookimpl
    def zstack_consistency_checks(self) -> list[ConsistencyCheck]:
        return [self.check]


async def test_a_third_party_plugin_contributes_its_own_check(tmp_path: Path) -> None:
    plugin = WidgetPlugin()
    url = driver_xml(tmp_path / "driver.xml")
    node = ManagementNode(data_dir=tmp_path / "node", config={}, plugins=[plugin],
                          settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": url})
    async with node:
        await node.api_call("CreateZone", name="z")
        report = await check(node)
        assert "widgets.count" in report.checks and report.ok
        await _build_host(node, url)
        plugin.check.broken = True
        report = await check(node)
        assert [(f.kind, f.plugin) for f in report.findings] == [("widget-missing", "WidgetPlugin")]
        plugin.check.raises = True
        report = await check(node)  # a broken check is reported, the others still run
        assert not report.ok and report.findings == []
        (failure,) = report.failures
        assert failure.check == "widgets.count" and failure.error.code == "SYS.1010"
        assert "WidgetPlugin" in failure.error.details and "RuntimeError" in failure.error.details
        assert set(report.checks) >= set(ALL_CHECKS)


async def _build_host(node: ManagementNode, url: str) -> None:
    zone = (await node.api_call("CreateZone", name="z2")).inventory
    cluster = (await node.api_call("CreateCluster", name="c", zoneUuid=zone.uuid)).inventory
    await node.api_call("AddKVMHost", name="h", clusterUuid=cluster.uuid, url=url)


async def test_a_check_registered_with_the_wrong_type_stops_start_up(tmp_path: Path) -> None:
    from zstack_core import NodeStartError

    class Wrong:
        @hookimpl
        def zstack_consistency_checks(self) -> list[Any]:
            return ["not a check"]

    node = ManagementNode(data_dir=tmp_path, config={}, plugins=[Wrong()], load_entry_points=False)
    with pytest.raises(NodeStartError, match="zstack_consistency_checks must return ConsistencyCheck"):
        await node.start()


# -- the API and the command ------------------------------------------------------------------


def zstack(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zstack_core.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


async def test_check_consistency_api_is_admin_only(cloud: Cloud) -> None:
    from zstack_core.testing import assert_error

    reply = await cloud.call("CheckConsistency")
    assert reply.ok and reply.findings == [] and reply.checks == ALL_CHECKS
    await orphan_ip(cloud)
    reply = await cloud.call("CheckConsistency", checks=["network.ips"])
    assert not reply.ok and [f.kind for f in reply.findings] == ["orphan-ip"] and reply.checks == ["network.ips"]
    await cloud.call("CreateAccount", name="tenant", password="tenant-password")
    session = (await cloud.call("LogInByAccount", accountName="tenant", password="tenant-password")).inventory.uuid
    await assert_error("SYS.1012", cloud.node.api_call("CheckConsistency", session_uuid=session))


async def test_zstack_check_command_against_a_running_node(cloud: Cloud, tmp_path: Path) -> None:
    import os

    http = await cloud.node.start_http("127.0.0.1", 0)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    login = await asyncio.to_thread(zstack, "login", "--url", http.url, "--account", "admin", "--password",
                                    ADMIN_PASSWORD, env=env)
    assert login.returncode == 0, login.stderr
    clean = await asyncio.to_thread(zstack, "check", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "consistent: 7 checks, 1 hosts compared" in clean.stdout
    kind, resource = await orphan_ip(cloud)
    found = await asyncio.to_thread(zstack, "check", "--json", env=env)
    assert found.returncode == 1
    data = json.loads(found.stdout)
    assert data["ok"] is False and [(f["kind"], f["resourceUuid"]) for f in data["findings"]] == [(kind, resource)]
    text = await asyncio.to_thread(zstack, "check", "--check", "network.ips", env=env)
    assert text.returncode == 1 and "orphan-ip" in text.stdout and "NOT consistent: 1 orphan-ip" in text.stdout
    only_vms = await asyncio.to_thread(zstack, "check", "--check", "kvm.domains", env=env)
    assert only_vms.returncode == 0, only_vms.stdout
    unreachable = await asyncio.to_thread(zstack, "check", "--url", "http://127.0.0.1:9", env=env)
    assert unreachable.returncode == 3


async def test_zstack_check_offline_starts_the_node_checks_and_stops(tmp_path: Path) -> None:
    # The test driver keeps a host's domains and volumes in the memory of the process that
    # opened it: the command's own process sees an empty host. So this cloud holds nothing a
    # new process would miss (a VM without disks, which the node's own VM sync finds gone and
    # marks Stopped as it starts).
    url = driver_xml(tmp_path / "driver.xml")
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    (data_dir / "zstack.toml").write_text(f'[node]\nlibvirt_uri = "{url}"\n[identity]\nadmin_password = "x-pass"\n')
    node = await start_cloud_node(data_dir, **{"node.libvirt_uri": url})
    try:
        from zstack_core.testing import EnvSpec, build_env

        await build_env(node, EnvSpec().zone().cluster().host(url=url).vm(image=None, l3_networks=()))
    finally:
        await node.stop()
    clean = await asyncio.to_thread(zstack, "--data-dir", str(data_dir), "check", "--offline")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "1 hosts compared" in clean.stdout
    # Behind the node's back: the owner of a VM that is gone. (A leaked host reservation would
    # not do: reconnecting a host recomputes its capacity, so the start repairs it.)
    import peewee

    db = peewee.SqliteDatabase(str(data_dir / "zstack.db"))
    db.execute_sql("INSERT INTO account_resource_ref (resource_uuid, resource_type, account_uuid, created_at) "
                   "VALUES ('0123456789abcdef0123456789abcdef', 'VmInstance', 'a', '2024-01-01 00:00:00')")
    db.close()
    found = await asyncio.to_thread(zstack, "--data-dir", str(data_dir), "check", "--offline", "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    kinds = [(f["kind"], f["resourceUuid"]) for f in json.loads(found.stdout)["findings"]]
    assert kinds == [("orphan-ownership", "0123456789abcdef0123456789abcdef")]
