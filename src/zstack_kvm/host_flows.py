"""Compute's flows in the host-connect chain: open libvirt, record facts, compute capacity.

The chain (``HostConnectFlows.CHAIN``) carries ``data["host"]`` (the :class:`HostInventory`),
``data["node"]`` and ``data["first_time"]``; other plugins slot flows in after these
(``PREPARE_NETWORK``, ``PREPARE_STORAGE``) and reach the host through ``HostRunMsg``, which
works from the moment :class:`ConnectFlow` has opened the connection.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from typing import Any

import libvirt  # type: ignore[import-untyped]

from zstack_core import Flow, NoRollbackFlow
from zstack_core.header import HostReservedCapacity

from .allocator import recompute_sync
from .configs import CPU_OVER_PROVISIONING, HOST_CONNECT_TIMEOUT, HVM_CPU_FLAG, LIBVIRT_VERSION, QEMU_IMG_VERSION
from .hypervisor import guest_facts
from .libvirt_host import LibvirtHost, libvirt_error
from .models import HostVO
from .service import compute_of

__all__ = ["CapacityFlow", "CollectFactsFlow", "ConnectFlow", "version_text"]


def version_text(number: int) -> str:
    """libvirt's packed version (``9000000``) as text (``9.0.0``)."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _libvirt_host(data: dict[str, Any]) -> LibvirtHost:
    return compute_of(data["node"]).hosts.libvirt_host(data["host"].uuid)


class ConnectFlow(Flow):
    """Open the host's one libvirt connection (rollback closes it)."""

    name = "kvm-connect"

    async def run(self, data: dict[str, Any]) -> None:
        node = data["node"]
        await _libvirt_host(data).open(node.configs.get(HOST_CONNECT_TIMEOUT.category, HOST_CONNECT_TIMEOUT.name))

    async def rollback(self, data: dict[str, Any]) -> None:
        await _libvirt_host(data).close()


def _read_facts(conn: libvirt.virConnect) -> dict[str, Any]:
    info = conn.getInfo()  # [arch, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
    caps = ET.fromstring(conn.getCapabilities())
    flags = sorted({f.get("name", "") for f in caps.findall("./host/cpu/feature")} & {"vmx", "svm"})
    return {"architecture": info[0], "memory": int(info[1]) << 20, "cpus": int(info[2]), "hvm_flags": flags,
            "lib_version": conn.getLibVersion(), "hypervisor_version": conn.getVersion(),
            "driver": conn.getType(), "guest": guest_facts(conn)}


async def _qemu_img_version() -> str | None:
    """``qemu-img --version`` of this machine, or None when QEMU's tools are not installed."""
    try:
        proc = await asyncio.create_subprocess_exec("qemu-img", "--version", stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    m = re.search(r"version\s+(\d+(?:\.\d+)+)", out.decode(errors="replace"))
    return m.group(1) if m else None


class CollectFactsFlow(NoRollbackFlow):
    """Record libvirt and QEMU versions and hardware-virtualization CPU flags as the seed's
    system tags, and the host's architecture and CPU count."""

    name = "kvm-collect-facts"

    async def run(self, data: dict[str, Any]) -> None:
        node, host = data["node"], data["host"]
        lh = _libvirt_host(data)
        try:
            facts = await lh.run(_read_facts)
        except Exception as exc:
            raise libvirt_error(exc, f"reading the facts of host {host.uuid}") from exc
        data["facts"] = facts
        lh.guest = facts["guest"]
        qemu_version: str | None = None
        if lh.uri.is_local_qemu:
            qemu_version = await _qemu_img_version()
        if qemu_version is None and facts["driver"] == "QEMU":
            qemu_version = version_text(facts["hypervisor_version"])  # a remote host's QEMU, as libvirt reports it
        tags = node.tags

        def write() -> None:
            tags.replace_sync(host.uuid, "Host", LIBVIRT_VERSION, LIBVIRT_VERSION.instantiate(
                version=version_text(facts["lib_version"])))
            if qemu_version is not None:
                tags.replace_sync(host.uuid, "Host", QEMU_IMG_VERSION, QEMU_IMG_VERSION.instantiate(version=qemu_version))
            else:
                tags.delete_sync(host.uuid, QEMU_IMG_VERSION)
            tags.delete_sync(host.uuid, HVM_CPU_FLAG)
            tags.create_sync(host.uuid, "Host", [HVM_CPU_FLAG.instantiate(flag=f) for f in facts["hvm_flags"]])
            HostVO.update(architecture=facts["architecture"], cpu_num=facts["cpus"]).where(HostVO.uuid == host.uuid).execute()

        await node.db.atomic(write)


async def reserved_capacity(node: Any, host: Any) -> HostReservedCapacity:
    """The sum of every plugin's ``zstack_host_reserved_capacity`` for ``host``."""
    cpu = memory = 0
    for r in await node.hooks.host_reserved_capacity(host):
        if r is not None:
            cpu += r.reserved_cpu
            memory += r.reserved_memory
    return HostReservedCapacity(reserved_cpu=cpu, reserved_memory=memory)


async def refresh_capacity(node: Any, host_uuid: str, facts: dict[str, Any] | None = None) -> None:
    """Recompute a host's totals (from ``facts``, if given), reservations and availability."""
    row = await node.db.run(lambda: HostVO.get_or_none(HostVO.uuid == host_uuid))
    if row is None:
        return
    reserved = await reserved_capacity(node, row.to_inventory())
    ratio = node.configs.resolve(CPU_OVER_PROVISIONING.category, CPU_OVER_PROVISIONING.name,
                                 [row.uuid, row.cluster_uuid, row.zone_uuid])
    totals = {"total_cpu": (facts["cpus"] if facts is not None else row.cpu_num) * ratio}
    if facts is not None:
        totals["total_memory"] = facts["memory"]
    await node.db.atomic(lambda: recompute_sync(host_uuid, reserved_cpu=reserved.reserved_cpu,
                                                reserved_memory=reserved.reserved_memory, **totals))


class CapacityFlow(NoRollbackFlow):
    """Total CPU (threads x ``kvm/cpu.overProvisioningRatio``) and memory; available = total -
    reserved (``zstack_host_reserved_capacity``, e.g. ``kvm/reservedMemory``) - VMs on the host."""

    name = "kvm-capacity"

    async def run(self, data: dict[str, Any]) -> None:
        await refresh_capacity(data["node"], data["host"].uuid, data["facts"])
