"""Compute's part of ``zstack check``: domains against VM rows, host capacity against VMs.

* ``kvm.domains``: on every connected host this node manages, each ``zstack-`` domain belongs
  to a VM row placed on that host, and each VM the database has Running or Paused there has a
  domain in that state. A VM left in a transitional state (``Starting``, ``Stopping``...) with
  no operation running on it is reported too: it is work a crash interrupted. A domain an
  operation could not remove while its host was unreachable (a ``vm_left_domain`` row) is
  reported as ``left-domain``: known, and removed by the VM sync within one
  ``kvm/vm.syncInterval`` of the host answering again.
* ``kvm.capacity``: on every host, ``available = total - reserved - (VMs placed there)`` for
  CPUs and memory (the invariant of :mod:`.allocator`); a VM holds a host exactly while it is in
  a state that has a domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zstack_core.check import CheckContext, ConsistencyCheck, Finding

from .hypervisor import list_domain_states
from .models import HostVO, LeftDomainVO, VmInstanceVO
from .vm import ON_HOST, TRANSITIONAL

__all__ = ["CHECKS", "DomainCheck", "HostCapacityCheck"]

HOLDS_HOST = (*ON_HOST, *TRANSITIONAL)
"""States in which a VM may hold a host (transitional ones: while the operation runs)."""


def _vm_rows() -> dict[str, Any]:
    return {r.uuid: r for r in VmInstanceVO.select(VmInstanceVO.uuid, VmInstanceVO.state, VmInstanceVO.host_uuid,
                                                   VmInstanceVO.cpu_num, VmInstanceVO.memory_size)}


class DomainCheck(ConsistencyCheck):
    name = "kvm.domains"
    description = "libvirt domains against VM instances, on every connected host"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        out: list[Finding] = []
        vms = await ctx.db(_vm_rows)
        left = set(await ctx.db(lambda: [(r.vm_uuid, r.host_uuid) for r in LeftDomainVO.select()]))
        host_uuids = {h.uuid for h in await ctx.hosts()}
        for vm in vms.values():
            if ctx.busy(f"vm-{vm.uuid}"):
                continue
            if vm.state in TRANSITIONAL:
                out.append(self.finding("vm-stuck", "VmInstance", vm.uuid,
                                        f"left {vm.state} with no operation running on it", vm.host_uuid))
            if vm.host_uuid is not None and vm.host_uuid not in host_uuids:
                out.append(self.finding("vm-on-missing-host", "VmInstance", vm.uuid,
                                        f"{vm.state} on host {vm.host_uuid}, which does not exist"))
        for host in await ctx.reachable_hosts():
            domains: dict[str, str] = await ctx.on_host(host.uuid, list_domain_states)
            for dom_uuid, dom_state in sorted(domains.items()):
                vm = vms.get(dom_uuid)
                if vm is not None and ctx.busy(f"vm-{vm.uuid}"):
                    continue
                if (dom_uuid, host.uuid) in left and (vm is None or vm.host_uuid != host.uuid):
                    out.append(self.finding("left-domain", "VmInstance", dom_uuid,
                                            f"domain is {dom_state}; an operation could not remove it while the "
                                            "host was unreachable, and the VM sync will", host.uuid))
                elif vm is None:
                    out.append(self.finding("orphan-domain", "VmInstance", dom_uuid,
                                            f"domain zstack-… is {dom_state} but no VM instance has this UUID",
                                            host.uuid))
                elif vm.host_uuid != host.uuid:
                    where = f"host {vm.host_uuid}" if vm.host_uuid else "no host"
                    out.append(self.finding("stray-domain", "VmInstance", dom_uuid,
                                            f"domain is {dom_state} here, but the VM is {vm.state} on {where}",
                                            host.uuid))
                elif vm.state in ("Running", "Paused") and dom_state != vm.state:
                    out.append(self.finding("state-mismatch", "VmInstance", dom_uuid,
                                            f"the VM is {vm.state} in the database, its domain is {dom_state}",
                                            host.uuid))
            for vm in vms.values():
                if (vm.host_uuid == host.uuid and vm.state in ("Running", "Paused") and vm.uuid not in domains
                        and not ctx.busy(f"vm-{vm.uuid}")):
                    out.append(self.finding("missing-domain", "VmInstance", vm.uuid,
                                            f"the VM is {vm.state} on this host but it has no domain here",
                                            host.uuid))
        return out


class HostCapacityCheck(ConsistencyCheck):
    name = "kvm.capacity"
    description = "host CPU and memory against the VMs placed on each host"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        def load() -> tuple[list[Any], dict[str, Any]]:
            return list(HostVO.select()), _vm_rows()

        hosts, vms = await ctx.db(load)
        out: list[Finding] = []
        busy_hosts = {vm.host_uuid for vm in vms.values() if ctx.busy(f"vm-{vm.uuid}") or vm.state == "Migrating"}
        for vm in vms.values():
            if vm.host_uuid is not None and vm.state not in HOLDS_HOST:
                out.append(self.finding("capacity-held", "VmInstance", vm.uuid,
                                        f"the VM is {vm.state} yet holds {vm.cpu_num} CPUs and {vm.memory_size} "
                                        f"bytes on host {vm.host_uuid}", vm.host_uuid))
            elif vm.host_uuid is None and vm.state in ON_HOST:
                out.append(self.finding("vm-without-host", "VmInstance", vm.uuid,
                                        f"the VM is {vm.state} but holds no host"))
        for host in hosts:
            if host.uuid in busy_hosts or ctx.busy(f"host-{host.uuid}"):
                continue
            placed = [vm for vm in vms.values() if vm.host_uuid == host.uuid]
            cpu = host.total_cpu - host.reserved_cpu - sum(vm.cpu_num for vm in placed)
            memory = host.total_memory - host.reserved_memory - sum(vm.memory_size for vm in placed)
            if (cpu, memory) != (host.available_cpu, host.available_memory):
                out.append(self.finding(
                    "capacity-mismatch", "Host", host.uuid,
                    f"available {host.available_cpu} CPUs / {host.available_memory} bytes, but total minus reserved "
                    f"minus its {len(placed)} VMs is {cpu} CPUs / {memory} bytes "
                    f"(leaked: {cpu - host.available_cpu} CPUs, {memory - host.available_memory} bytes)", host.uuid))
        return out


CHECKS: list[ConsistencyCheck] = [DomainCheck(), HostCapacityCheck()]
