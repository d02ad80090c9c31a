"""Keeping VM states in step with libvirt (ZStack's VM tracer).

libvirt's lifecycle events say *that* something happened to a domain; they can be lost (a
daemon restart, a dropped connection), so they only trigger a check. Every
``kvm/vm.syncInterval`` seconds each connected host is compared as a whole. A check of one VM
runs in its ``vm-<uuid>`` queue and asks libvirt afresh, so it never races an operation on the
VM: an operation in progress finishes first, and the check sees its outcome.

What a check changes (the database follows libvirt):

* a VM we think Running/Paused/Unknown whose domain is gone or shut off (killed with
  ``virsh destroy``, powered off from inside, crashed) becomes ``Stopped``: its capacity is
  given back, its leftover definition removed, its network services released;
* Running <-> Paused follow the domain; ``Unknown`` (host was disconnected) becomes what the
  domain is;
* a stopped definition of a VM that no longer runs there is removed (a VM runs from a fresh
  definition at each start);
* a domain an operation had to remove while its host was unreachable (a create or start
  rolled back, a forced stop or destroy; QEMU may have been launched or run on; a
  ``LeftDomainVO`` row says so) is removed once the host lists it again, unless the VM has
  been placed on that host since: the operation is finished. Any other domain of no VM, or
  running for a VM that is not placed there, is left for people to look at (``zstack check``
  reports it as ``orphan-domain`` or ``stray-domain``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from zstack_core import ZStackError

from .configs import VM_SYNC_INTERVAL
from .hypervisor import destroy_domain, domain_state, list_domain_states
from .models import HostVO, LeftDomainVO, VmInstanceVO

if TYPE_CHECKING:
    from .service import ComputeService

__all__ = ["VmStateSync"]

log = logging.getLogger("zstack.kvm.vmsync")


class VmStateSync:
    def __init__(self, service: ComputeService) -> None:
        self.service = service
        self._task: asyncio.Task[None] | None = None
        self._pending: set[str] = set()
        self._checks: set[asyncio.Task[Any]] = set()
        self.wake = asyncio.Event()
        """Set to run a pass now (``kvm/vm.syncInterval`` changed, or a test wants one)."""

    @property
    def node(self) -> Any:
        return self.service.node

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="zstack-kvm-vm-sync")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._checks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            interval = self.node.configs.get(VM_SYNC_INTERVAL.category, VM_SYNC_INTERVAL.name)
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("VM state sync pass failed")

    # -- events -------------------------------------------------------------------------------

    def hint(self, host_uuid: str, domain_uuid: str) -> None:
        """A lifecycle event for ``domain_uuid`` on ``host_uuid``: check that VM soon (once, however
        many events arrive before the check runs)."""
        vm_uuid = domain_uuid.replace("-", "")
        if vm_uuid in self._pending:
            return
        self._pending.add(vm_uuid)
        task = asyncio.get_running_loop().create_task(self._checked(vm_uuid))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _checked(self, vm_uuid: str) -> None:
        try:
            await self.reconcile_vm(vm_uuid, pending=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("checking VM %s after a libvirt event failed", vm_uuid)

    # -- checks -------------------------------------------------------------------------------

    async def reconcile_all(self) -> None:
        owns = self.node.cluster.owns  # each host's VMs are compared by the node owning the host
        hosts = await self.node.db.run(lambda: [h.uuid for h in HostVO.select(HostVO.uuid)
                                                .where(HostVO.status == "Connected") if owns(h.uuid)])
        await asyncio.gather(*(self.reconcile_host(h) for h in hosts), return_exceptions=True)

    async def reconcile_host(self, host_uuid: str) -> None:
        """Compare every VM of the host with its domains; check each that disagrees."""
        hosts = self.service.hosts
        lh = hosts.connections.get(host_uuid)
        if lh is None or not lh.is_open:
            return
        try:
            domains = await hosts.run_on(host_uuid, list_domain_states, f"listing domains of host {host_uuid}")
        except ZStackError as exc:
            log.info("cannot list the domains of host %s: %s", host_uuid, exc.error)
            return
        rows = await self.node.db.run(lambda: list(VmInstanceVO.select(VmInstanceVO.uuid, VmInstanceVO.state,
                                                                       VmInstanceVO.host_uuid)
                                                   .where((VmInstanceVO.host_uuid == host_uuid)
                                                          | VmInstanceVO.uuid.in_(list(domains)))))
        left = await self.node.db.run(lambda: list(LeftDomainVO.select().where(LeftDomainVO.host_uuid == host_uuid)))
        if left:
            await asyncio.gather(*(self._remove_left_domain(row) for row in left))
        for row in rows:
            seen = domains.get(row.uuid)
            here = row.host_uuid == host_uuid
            if here and row.state in ("Running", "Paused") and seen == row.state:
                continue
            if not here and seen is None:
                continue
            await self.reconcile_vm(row.uuid, seen_on=None if here else host_uuid)

    async def _remove_left_domain(self, left: LeftDomainVO) -> None:
        """Finish an operation that could not remove VM ``left.vm_uuid``'s domain on its host. In
        the VM's queue, asking libvirt afresh (not the listing, which may predate the row), so it
        never races an operation on the VM."""
        vm_uuid, host_uuid = left.vm_uuid, left.host_uuid
        hosts = self.service.hosts

        def forget() -> None:
            LeftDomainVO.delete().where((LeftDomainVO.vm_uuid == vm_uuid)
                                        & (LeftDomainVO.host_uuid == host_uuid)).execute()

        async def work() -> None:
            vm = await self.node.db.run(lambda: VmInstanceVO.get_or_none(VmInstanceVO.uuid == vm_uuid))
            try:
                if vm is None or vm.host_uuid != host_uuid:  # else: placed there since, its own domain now
                    if await hosts.run_on(host_uuid, lambda c: destroy_domain(c, vm_uuid),
                                          f"removing the left domain of VM {vm_uuid}"):
                        log.warning("removed the domain of VM %s that an operation left on host %s while it "
                                    "was unreachable", vm_uuid, host_uuid)
            except ZStackError as exc:
                log.info("could not remove the left domain of VM %s yet: %s", vm_uuid, exc.error)
                return
            await self.node.db.run(forget)

        await self.node.tasks.run(f"vm-{vm_uuid}", work)

    async def reconcile_vm(self, vm_uuid: str, pending: bool = False, seen_on: str | None = None) -> None:
        """Check one VM in its queue. ``seen_on``: a host (not the VM's) that lists its domain."""
        async def check() -> None:
            if pending:
                self._pending.discard(vm_uuid)
            await self._check(vm_uuid, seen_on)

        await self.node.tasks.run(f"vm-{vm_uuid}", check)

    async def _check(self, vm_uuid: str, seen_on: str | None = None) -> None:
        vms, hosts = self.service.vms, self.service.hosts
        vm = await self.node.db.run(lambda: VmInstanceVO.get_or_none(VmInstanceVO.uuid == vm_uuid))
        if vm is None:
            return
        # A stopped definition left on a host the VM is not running on (its last host, usually).
        for other in {vm.last_host_uuid, seen_on} - {None, vm.host_uuid}:
            lh = hosts.connections.get(other)
            if lh is not None and lh.is_open:
                try:
                    if await hosts.run_on(other, lambda c: domain_state(c, vm_uuid), "reading a domain") == "Stopped":
                        await hosts.run_on(other, lambda c: destroy_domain(c, vm_uuid), "removing a stale domain")
                except ZStackError:
                    pass
        host_uuid = vm.host_uuid
        if host_uuid is None or vm.state not in ("Running", "Paused", "Unknown"):
            return
        lh = hosts.connections.get(host_uuid)
        if lh is None or not lh.is_open:
            return
        try:
            state = await hosts.run_on(host_uuid, lambda c: domain_state(c, vm_uuid), f"reading VM {vm_uuid}")
        except ZStackError as exc:
            log.info("cannot read VM %s on host %s: %s", vm_uuid, host_uuid, exc.error)
            return
        if state in ("Running", "Paused"):
            if state != vm.state:
                log.info("VM %s is %s in libvirt, was %s here", vm_uuid, state, vm.state)
                await vms.change(vm_uuid, state)
            return
        log.warning("VM %s is %s but libvirt has it %s on host %s: now Stopped", vm_uuid, vm.state,
                    state or "gone", host_uuid)
        try:
            await hosts.run_on(host_uuid, lambda c: destroy_domain(c, vm_uuid), f"removing VM {vm_uuid}'s definition")
        except ZStackError as exc:
            log.info("could not remove the stopped domain of VM %s: %s", vm_uuid, exc.error)
        await vms.change(vm_uuid, "Stopped", release=True, last_host_uuid=host_uuid)
        await self.node.hooks.network_services_release(await vms.spec_of(vm_uuid, None))
