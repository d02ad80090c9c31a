"""examples/one_pc_cloud.py: from nothing to a running VM through `zstack node start`, the HTTP
API and the SDK; on the test driver, and on a real libvirtd where the VM outlives the node."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zstack_core.testing import NodeFactory, api

pytest_plugins = ["zstack_core.testing"]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "one_pc_cloud.py"
PHYS = "zs-opc0"
CIDR = "10.252.111.0/24"
"""Unlikely to clash with a subnet of another test's libvirt network on the shared libvirtd."""


def run(*args: str, cwd: Path) -> tuple[dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # The VM's inventory is the last line of standard output, as one JSON object.
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def check_vm(vm: dict[str, Any], cidr: str = "192.168.111.0/24") -> None:
    assert vm["name"] == "vm-1" and vm["state"] == "Running" and vm["hostUuid"]
    assert vm["memorySize"] == 64 << 20 and vm["cpuNum"] == 1
    [root] = vm["allVolumes"]
    assert root["type"] == "Root" and root["status"] == "Ready" and root["rootImageUuid"] == vm["imageUuid"]
    [nic] = vm["vmNics"]
    subnet = ipaddress.ip_network(cidr)
    assert ipaddress.ip_address(nic["ip"]) in subnet and nic["gateway"] == str(subnet[1])


def test_on_the_test_driver(tmp_path: Path) -> None:
    vm, progress = run("--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    check_vm(vm)
    assert "node ready at http://127.0.0.1:" in progress
    assert (tmp_path / "data" / "zstack.db").exists()


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60)


def libvirt_names() -> set[str]:
    """Domains, networks and pools on the shared libvirtd, and this machine's interfaces."""
    names = set()
    for what in (("list", "--all", "--name"), ("net-list", "--all", "--name"), ("pool-list", "--all", "--name")):
        names |= set(virsh(*what).stdout.split())
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return names | {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}


@pytest.fixture
def free_interface() -> Iterator[str]:
    """A veth interface of our own (no IPv4) for the L2 network to bridge."""
    subprocess.run(["ip", "link", "del", PHYS], capture_output=True)
    made = subprocess.run(["ip", "link", "add", PHYS, "type", "veth", "peer", "name", f"{PHYS}p"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a veth pair here: {made.stderr.strip()}")
    try:
        yield PHYS
    finally:
        subprocess.run(["ip", "link", "del", PHYS], capture_output=True)


async def tear_down(node: Any, seen: set[str]) -> set[str]:
    """Delete, through the node's APIs, everything the script built; add the UUIDs to ``seen``."""
    async def each(resource: str) -> list[Any]:
        return list((await api(node, f"Query{resource}")).inventories)

    for resource in ("VmInstance", "L3Network", "L2Network", "PrimaryStorage"):
        seen |= {inv.uuid for inv in await each(resource)}
    for host in await each("Host"):  # the node restarted: reach the host before cleaning it up
        await api(node, "ReconnectHost", uuid=host.uuid)
    for vm in await each("VmInstance"):
        if vm.state != "Destroyed":
            await api(node, "DestroyVmInstance", uuid=vm.uuid)
        await api(node, "ExpungeVmInstance", uuid=vm.uuid)
    for resource in ("L3Network", "L2Network"):
        for inv in await each(resource):
            await api(node, f"Delete{resource}", uuid=inv.uuid)
    for ps in await each("PrimaryStorage"):
        for cluster in await each("Cluster"):
            await api(node, "DetachPrimaryStorageFromCluster", primary_storage_uuid=ps.uuid, cluster_uuid=cluster.uuid)
        await api(node, "DeletePrimaryStorage", uuid=ps.uuid)
    return seen


def ours(names: set[str], uuids: set[str]) -> set[str]:
    """The libvirt objects and interfaces named after one of ``uuids``: ``zs-dhcp-<uuid>``,
    ``zs-l2-<uuid>``, pools ``zs-<uuid[:8]>``, DHCP links ``zsdb<uuid[:11]>``..."""
    found = set()
    for name in names:
        for prefix in ("zs-dhcp-", "zs-l2-", "zs-", "zsdb", "zsdd", "zsdl"):
            rest = name.removeprefix(prefix)
            if rest != name and len(rest) >= 8 and any(u.startswith(rest) for u in uuids):
                found.add(name)
    return found


@pytest.fixture
def qemu_reachable_dir() -> Iterator[Path]:
    """A directory QEMU (user libvirt-qemu) can reach, unlike pytest's private tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="zstack-one-pc-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_on_a_real_libvirtd_the_vm_outlives_the_node(libvirtd: str, free_interface: str, tmp_path: Path,
                                                           qemu_reachable_dir: Path, make_node: NodeFactory) -> None:
    data = qemu_reachable_dir / "data"
    node = None
    domain = None
    uuids: set[str] = set()
    cleaned = False
    try:
        vm, progress = run("--data-dir", str(data), "--libvirt-uri", libvirtd, "--physical-interface", free_interface,
                           "--cidr", CIDR, cwd=tmp_path)
        domain = f"zstack-{vm['uuid']}"
        check_vm(vm, CIDR)
        assert "the VM keeps running" in progress
        # The script and its node are gone; the QEMU domain runs on.
        assert virsh("domstate", domain).stdout.strip() == "running"

        # A node started again on the same data finds the VM where it left it, and takes it all down.
        node = await make_node(plugins=["kvm", "storage", "network"], data_dir=data, libvirt_uri=libvirtd)
        [again] = (await api(node, "QueryVmInstance", conditions=[{"name": "uuid", "op": "=", "value": vm["uuid"]}])).inventories
        assert again.state == "Running"
        await tear_down(node, uuids)
        assert vm["uuid"] in uuids and len(uuids) == 4  # VM, L3, L2, primary storage
        assert virsh("domstate", domain).returncode != 0  # undefined
        assert ours(libvirt_names(), uuids) == set(), "the node left these behind"
        assert f"br_{free_interface}" not in libvirt_names()
        cleaned = True
    finally:
        if not cleaned:  # a step above failed: still leave the shared libvirtd as we found it
            await clean_up_after_failure(make_node, data, libvirtd, node, uuids, free_interface)
        if domain is not None:
            virsh("destroy", domain)
            virsh("undefine", domain)


async def clean_up_after_failure(make_node: NodeFactory, data: Path, libvirtd: str, node: Any, uuids: set[str],
                                 interface: str) -> None:
    """Through the node's APIs as far as they go, then by name whatever they left behind."""
    try:
        if node is None and (data / "zstack.db").exists():
            node = await make_node(plugins=["kvm", "storage", "network"], data_dir=data, libvirt_uri=libvirtd)
        if node is not None:
            await tear_down(node, uuids)
    except Exception as exc:  # noqa: BLE001 - the test has failed already; that is the failure to report
        print(f"cleaning up through the API failed: {exc}")
    for name in ours(libvirt_names(), uuids):
        if name.startswith("zs-dhcp-") or name.startswith("zs-l2-"):
            virsh("net-destroy", name)
            virsh("net-undefine", name)
        elif name.startswith("zs-"):
            virsh("pool-destroy", name)
            virsh("pool-undefine", name)
        else:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        print(f"cleaning up: removed {name}, which the node left behind")
    subprocess.run(["ip", "link", "del", f"br_{interface}"], capture_output=True)
