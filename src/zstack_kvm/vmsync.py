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
* the domain of a create rolled back while its host was away (the rollback could not remove
  it; the create's journal row says so) is removed once the host lists it again;
* a domain running for a VM we have ``Stopped`` whose start failed while its host was
  unreachable (the start was answered with an error, its rollback could not reach the host to
  remove the domain, and QEMU had been launched; a journal row says so) is removed: the
  rollback is finished. Any other running domain of a Stopped VM is left for people to look at
  (``zstack check`` reports it as ``stray-domain``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from zstack_core import ZStackError

from .configs import VM_SYNC_INTERVAL
from .hypervisor import destroy_domain, domain_state, list_domain_states
from .models import HostVO, VmCreatingVO, VmInstanceVO

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
        known = {row.uuid for row in rows}
        if any(uuid not in known for uuid in domains):
            await self._remove_domains_of_rolled_back_creates(host_uuid, [u for u in domains if u not in known])
        for row in rows:
            seen = domains.get(row.uuid)
            here = row.host_uuid == host_uuid
            if here and row.state in ("Running", "Paused") and seen == row.state:
                continue
            if not here and seen is None:
                continue
            await self.reconcile_vm(row.uuid, seen_on=None if here else host_uuid)

    async def _remove_domains_of_rolled_back_creates(self, host_uuid: str, uuids: list[str]) -> None:
        """Domains with no VM: those a create of ours made and could not remove when it rolled
        back (the host was away) are named by a create journal row that outlived its VM. They
        go now, and the row with them. Any other is left alone: not ours to touch (another
        system's, or one the consistency checker reports as ``orphan-domain``)."""
        def left_by_creates() -> list[str]:
            journal = [r.vm_uuid for r in VmCreatingVO.select().where(VmCreatingVO.vm_uuid.in_(uuids))]
            alive = {r.uuid for r in VmInstanceVO.select(VmInstanceVO.uuid).where(VmInstanceVO.uuid.in_(journal))}
            return [u for u in journal if u not in alive]

        for vm_uuid in await self.node.db.run(left_by_creates):
            try:
                await self.service.hosts.run_on(host_uuid, lambda c, u=vm_uuid: destroy_domain(c, u),
                                                f"removing the domain of rolled-back VM {vm_uuid}")
            except ZStackError as exc:
                log.info("could not remove the domain of rolled-back VM %s yet: %s", vm_uuid, exc.error)
                continue
            log.warning("removed the domain of VM %s, whose create was rolled back while host %s was away",
                        vm_uuid, host_uuid)
            await self.node.db.run(lambda u=vm_uuid: VmCreatingVO.delete().where(VmCreatingVO.vm_uuid == u)
                                   .execute())

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
        # Leftover domains on hosts the VM is not running on (its last host, usually): a stopped
        # definition; or, for a VM that is Stopped, a running domain a failed start left.
        for other in {vm.last_host_uuid, seen_on} - {None, vm.host_uuid}:
            lh = hosts.connections.get(other)
            if lh is not None and lh.is_open:
                try:
                    state = await hosts.run_on(other, lambda c: domain_state(c, vm_uuid), "reading a domain")
                    left = state in ("Running", "Paused") and vm.state == "Stopped" and await self.node.db.run(
                        lambda: VmCreatingVO.get_or_none(VmCreatingVO.vm_uuid == vm_uuid)) is not None
                    if left:
                        log.warning("VM %s is Stopped but its domain is %s on host %s (its start failed while "
                                    "the host was unreachable): removing it", vm_uuid, state, other)
                    if state == "Stopped" or left:
                        await hosts.run_on(other, lambda c: destroy_domain(c, vm_uuid), "removing a stale domain")
                    if left:
                        await self.node.db.run(lambda: VmCreatingVO.delete()
                                               .where(VmCreatingVO.vm_uuid == vm_uuid).execute())
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
