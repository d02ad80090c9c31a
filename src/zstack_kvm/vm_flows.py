"""Compute's flows in the VM-create and VM-expunge chains.

VM create (``VmCreateFlows.CHAIN``; data: ``spec``, ``node``, plus compute's ``placement`` and
``strategy``), in ZStack's order: allocate host (here) -> primary storage, volumes (storage) ->
NICs, IPs (network) -> create on the hypervisor (here) -> after instantiation (here). A failure
anywhere rolls back every completed flow in reverse: the domain is destroyed, the capacity given
back.

VM expunge (``VmReleaseFlows.CHAIN``; data: ``spec``, ``node``): delete the domain from the
hypervisor and return capacity (both already done when a VM is destroyed; these make sure).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from zstack_core import Flow, NoRollbackFlow, ZStackError

from .hypervisor import destroy_domain
from .service import compute_of

log = logging.getLogger("zstack.kvm.vm")

__all__ = ["AllocateHostFlow", "CreateOnHypervisorFlow", "DeleteOnHypervisorFlow", "InstantiatePostFlow",
           "ReturnCapacityFlow"]


class AllocateHostFlow(Flow):
    """Pick a host with room (filters, strategy) and reserve the VM's CPUs and memory on it."""

    name = "kvm-allocate-host"

    async def run(self, data: dict[str, Any]) -> None:
        spec = data["spec"]
        host = await compute_of(data["node"]).allocator.allocate(data["placement"], spec)
        spec.destination_host = host
        spec.vm = attrs.evolve(spec.vm, host_uuid=host.uuid, cluster_uuid=host.cluster_uuid, zone_uuid=host.zone_uuid)

    async def rollback(self, data: dict[str, Any]) -> None:
        spec = data["spec"]
        await compute_of(data["node"]).allocator.release(spec.vm.uuid)
        spec.destination_host = None


class CreateOnHypervisorFlow(Flow):
    """``zstack_vm_before_instantiate_resource``, then (unless created stopped) the devices from
    ``zstack_vm_domain_devices``, network services, and define + start on the host."""

    name = "kvm-create-on-hypervisor"

    async def run(self, data: dict[str, Any]) -> None:
        node, spec = data["node"], data["spec"]
        await node.hooks.vm_before_instantiate_resource(spec)
        if data.get("strategy") == "CreateStopped":
            return
        data["kvm_defining"] = True
        try:
            await compute_of(node).vms.instantiate(spec, spec.destination_host.uuid)
        except Exception:
            # The chain rolls back the flows that succeeded, not the one that fails. A define (or a
            # start cut short when libvirtd died) may have left the domain: remove it here.
            try:
                await self._remove_domain(data)
            except ZStackError as exc:
                log.warning("VM %s: its domain could not be removed yet: %s", spec.vm.uuid, exc.error)
            raise

    async def rollback(self, data: dict[str, Any]) -> None:
        if not data.get("kvm_defining"):
            return
        node, spec = data["node"], data["spec"]
        try:
            await self._remove_domain(data)
        finally:
            await node.hooks.network_services_release(spec)

    @staticmethod
    async def _remove_domain(data: dict[str, Any]) -> None:
        """Destroy and undefine the VM's domain, if any. When the host cannot be reached (libvirtd
        died mid-create) ``data["kvm_domain_left"]`` is set to the host's UUID, so the create's
        undo records it (``LeftDomainVO``) and the VM sync removes the domain once the host lists
        it again; then this raises."""
        spec, host = data["spec"], data["spec"].destination_host
        if host is None:
            return
        try:
            await compute_of(data["node"]).hosts.run_on(host.uuid, lambda c: destroy_domain(c, spec.vm.uuid),
                                                        f"removing the domain of VM {spec.vm.uuid}")
        except ZStackError:
            data["kvm_domain_left"] = host.uuid  # the host's rollback clears destination_host
            raise


class InstantiatePostFlow(NoRollbackFlow):
    """``zstack_vm_after_instantiate_resource``: the VM exists (and runs, unless created stopped)."""

    name = "kvm-instantiate-post"

    async def run(self, data: dict[str, Any]) -> None:
        await data["node"].hooks.vm_after_instantiate_resource(data["spec"])


class DeleteOnHypervisorFlow(NoRollbackFlow):
    """Remove any definition of the VM left on its host (destroying already removed it)."""

    name = "kvm-delete-on-hypervisor"

    async def run(self, data: dict[str, Any]) -> None:
        spec = data["spec"]
        compute = compute_of(data["node"])
        for host_uuid in {spec.vm.host_uuid, spec.vm.last_host_uuid} - {None}:
            lh = compute.hosts.connections.get(host_uuid)
            if lh is not None and lh.is_open:
                await compute.hosts.run_on(host_uuid, lambda c: destroy_domain(c, spec.vm.uuid),
                                           f"removing the domain of VM {spec.vm.uuid}")


class ReturnCapacityFlow(NoRollbackFlow):
    """Give back host capacity the VM still holds (none after a destroy; this makes sure)."""

    name = "kvm-return-capacity"

    async def run(self, data: dict[str, Any]) -> None:
        await compute_of(data["node"]).allocator.release(data["spec"].vm.uuid)
