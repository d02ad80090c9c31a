"""VM instances: create (a flow chain), start, stop, reboot, pause, resume, destroy, recover and
expunge. Migration is in :mod:`.migration`; devices and the console in :mod:`.vm_devices`.

States (ZStack's): ``Starting``, ``Running``, ``Paused``, ``Stopping``, ``Stopped``,
``Rebooting``, ``Migrating``, ``Destroying``, ``Destroyed``, ``Expunging``, ``Unknown`` (its host
is disconnected). Every change goes through :meth:`VmPart.change` and is announced with
``zstack_vm_state_changed``. Work on one VM is serialized by the task queue ``vm-<uuid>``.

Invariants: a VM has a domain on a host exactly while its ``host_uuid`` is set, and holds that
host's capacity exactly then (see :mod:`.allocator`). Stopping, destroying and a failed create
remove the domain and give the capacity back; starting defines the domain afresh from the
devices other plugins add through ``zstack_vm_domain_devices``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from zstack_core import FlowError, ZStackError, handles, invalid_argument
from zstack_core.db import new_uuid
from zstack_core.header import (
    HostInventory,
    VmCreateFlows,
    VmInstanceInventory,
    VmInstanceSpec,
    VmNicInventory,
    VmReleaseFlows,
    VolumeInventory,
)
from zstack_core.ownership import own_sync, owner_of_sync

from .allocator import AllocationRequest
from .api import (
    APICreateVmInstanceMsg,
    APIDestroyVmInstanceMsg,
    APIExpungeVmInstanceMsg,
    APIPauseVmInstanceMsg,
    APIRebootVmInstanceMsg,
    APIRecoverVmInstanceMsg,
    APIResumeVmInstanceMsg,
    APIStartVmInstanceMsg,
    APIStopVmInstanceMsg,
    APIUpdateVmInstanceMsg,
    APIVmInstanceEvent,
)
from .checks import cascade_mode, check_description, check_name
from .configs import BOOT_ORDER, VM_CPU_MODE, VM_STOP_TIMEOUT
from .errors import HostErrors, VmErrors
from .hypervisor import build_domain, define_and_start, destroy_domain, domain_state, pause, request_shutdown, resume
from .models import HostVO, InstanceOfferingVO, VmCreatingVO, VmInstanceVO, remember_left_domain_sync
from .offering import check_vm_size
from zstack_core.prepared import InsertRow, Prepared
from .service import Part
from .zone import forget_resource_sync

__all__ = ["ON_HOST", "TRANSITIONAL", "VmPart", "attach_children_sync"]

log = logging.getLogger("zstack.kvm.vm")

# The statements of every VM create, compiled once (see .prepared).
_INSERT_VM = InsertRow(VmInstanceVO)
_INSERT_CREATING = InsertRow(VmCreatingVO)
_VM = Prepared(lambda p: VmInstanceVO.select().where(VmInstanceVO.uuid == p.vm))
_STARTED = Prepared(lambda p: VmInstanceVO.update(state=p.to, last_host_uuid=p.host)
                    .where((VmInstanceVO.uuid == p.vm) & (VmInstanceVO.state == p.old)))
_CREATED = Prepared(lambda p: VmCreatingVO.delete().where(VmCreatingVO.vm_uuid == p.vm))
_CHILDREN: dict[type[Any], Prepared] = {}
"""Per child model (NICs, volumes): its rows of one VM."""

ON_HOST = ("Running", "Paused", "Unknown")
"""Stable states in which the VM has a domain on ``host_uuid``."""
TRANSITIONAL = {"Starting": None, "Stopping": "Unknown", "Rebooting": "Unknown", "Migrating": "Unknown",
                "Destroying": "Unknown", "Pausing": "Unknown", "Resuming": "Unknown", "Expunging": "Destroyed"}
"""Where a VM left in a transitional state by a stopped node goes when the node starts again
(None: ``Unknown`` if it holds a host, else ``Stopped``)."""


def attach_children_sync(node: Any, invs: list[VmInstanceInventory]) -> list[VmInstanceInventory]:
    """The VMs with their NICs and volumes, when network and storage serve them as the
    queryable resources ``VmNic`` and ``Volume`` (database thread)."""
    if not invs:
        return invs
    uuids = [i.uuid for i in invs]
    by_vm: dict[str, dict[str, list[Any]]] = {u: {"vm_nics": [], "all_volumes": []} for u in uuids}
    for resource_name, field, kind in (("VmNic", "vm_nics", VmNicInventory), ("Volume", "all_volumes", VolumeInventory)):
        resource = node.query.resources.get(resource_name)
        column = getattr(resource.model, "vm_instance_uuid", None) if resource is not None else None
        if resource is None or column is None:
            continue
        if len(uuids) == 1:  # one VM (every create and state change): a statement compiled once
            model = resource.model
            prepared = _CHILDREN.get(model)
            if prepared is None:
                prepared = _CHILDREN[model] = Prepared(
                    lambda p, model=model: model.select().where(getattr(model, "vm_instance_uuid") == p.vm))
            rows = prepared.rows(model, vm=uuids[0])
        else:
            rows = list(resource.model.select().where(column.in_(uuids)))
        children = resource.to_inventories(rows) if resource.to_inventories else [r.to_inventory() for r in rows]
        for child in children:
            if isinstance(child, kind) and child.vm_instance_uuid in by_vm:
                by_vm[child.vm_instance_uuid][field].append(child)
    out = []
    for inv in invs:
        extra = by_vm[inv.uuid]
        extra["vm_nics"].sort(key=lambda n: n.device_id)
        extra["all_volumes"].sort(key=lambda v: (v.type != "Root", v.device_id if v.device_id is not None else 0))
        out.append(attrs.evolve(inv, vm_nics=extra["vm_nics"], all_volumes=extra["all_volumes"]))
    return out





class VmPart(Part):
    interrupted_creates: list[str]
    """VMs whose create a previous run of the node did not finish (found at start-up)."""

    # -- reading ------------------------------------------------------------------------------

    async def get(self, uuid: str, field: str = "uuid") -> VmInstanceVO:
        rows = await self.db(lambda: _VM.rows(VmInstanceVO, vm=uuid))
        if not rows:
            raise VmErrors.exc("1002", f"no VM instance {uuid}", field=field)
        return rows[0]  # type: ignore[no-any-return]

    async def inventory(self, uuid: str) -> VmInstanceInventory:
        row = await self.get(uuid)
        return (await self.db(attach_children_sync, self.node, [row.to_inventory()]))[0]

    async def spec_of(self, uuid: str, host: HostInventory | None) -> VmInstanceSpec:
        inv = await self.inventory(uuid)

        def facts() -> tuple[str | None, list[str]]:
            return owner_of_sync(uuid), self.node.tags.tags_sync(uuid)

        owner, tags = await self.db(facts)
        root = next((v for v in inv.all_volumes if v.type == "Root"), None)
        return VmInstanceSpec(vm=inv, account_uuid=owner, image_uuid=inv.image_uuid, system_tags=tags,
                              destination_host=host, root_volume=root,
                              data_volumes=[v for v in inv.all_volumes if v.type != "Root"], nics=list(inv.vm_nics))

    @staticmethod
    def require(vm: VmInstanceVO, allowed: Iterable[str], action: str) -> None:
        allowed = tuple(allowed)
        if vm.state not in allowed:
            raise VmErrors.exc("1001", f"VM {vm.uuid} is {vm.state}; {action} needs it {' or '.join(allowed)}",
                               state=vm.state)

    async def change(self, uuid: str, to: str, *, expect: Sequence[str] | None = None, release: bool = False,
                     **fields: Any) -> str:
        """Move the VM to state ``to`` (writing ``fields``; giving its capacity back when
        ``release``) if it is in one of ``expect``; announce the change. Returns the old state."""
        def tx() -> str:
            from .allocator import give_back_sync

            row = VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid)
            if row is None:
                raise VmErrors.exc("1002", f"no VM instance {uuid}")
            if expect is not None and row.state not in expect:
                raise VmErrors.exc("1001", f"VM {uuid} is {row.state}, expected {' or '.join(expect)}", state=row.state)
            if release:
                give_back_sync(uuid, state=to, **fields)
            else:
                VmInstanceVO.update(state=to, **fields).where(VmInstanceVO.uuid == uuid).execute()
            return str(row.state)

        old = await self.atomic(tx)
        if old != to:
            await self.node.hooks.vm_state_changed(await self.inventory(uuid), old, to)
        return old

    def queue(self, uuid: str, fn: Any) -> Any:
        return self.node.tasks.run(f"vm-{uuid}", fn)

    # -- hypervisor helpers -------------------------------------------------------------------

    async def instantiate(self, spec: VmInstanceSpec, host_uuid: str, start: bool = True) -> None:
        """Collect the VM's devices from ``zstack_vm_domain_devices``, apply network services and
        define (and start) its domain on ``host_uuid``."""
        hosts = self.service.hosts
        lh = hosts.libvirt_host(host_uuid)
        if lh.guest is None:
            raise HostErrors.exc("1001", f"host {host_uuid} has not finished connecting")
        await self.node.hooks.vm_domain_devices(spec)
        boot: tuple[str, ...] = ("hd",)
        for tag in spec.system_tags:
            tokens = BOOT_ORDER.tokens(tag)
            if tokens is not None:
                boot = tuple(tokens["order"].split(","))
        domain = build_domain(spec, lh.guest, listen="127.0.0.1" if lh.uri.is_local else "0.0.0.0", boot=boot,
                              cpu_mode=self.cpu_mode())
        xml = domain.to_xml()
        await self.node.hooks.network_services_apply(spec)
        try:
            await hosts.run_on(host_uuid, lambda c: define_and_start(c, xml, start), f"starting VM {spec.vm.uuid}")
        except BaseException:
            await self.node.hooks.network_services_release(spec)
            raise

    async def power_off(self, host_uuid: str, uuid: str, graceful: bool) -> None:
        """Graceful: ask the guest to power off and wait up to ``kvm/vm.stopTimeout`` seconds;
        then (or at once when not graceful) destroy and undefine the domain."""
        hosts = self.service.hosts
        timeout = self.node.configs.get(VM_STOP_TIMEOUT.category, VM_STOP_TIMEOUT.name)
        if graceful and timeout > 0:
            try:
                await hosts.run_on(host_uuid, lambda c: request_shutdown(c, uuid), f"shutting VM {uuid} down")
            except ZStackError as exc:
                log.info("VM %s: graceful shutdown refused (%s); destroying it", uuid, exc.error)
            else:
                loop = asyncio.get_running_loop()
                deadline, delay = loop.time() + timeout, 0.05
                while loop.time() < deadline:
                    state = await hosts.run_on(host_uuid, lambda c: domain_state(c, uuid), f"reading VM {uuid}")
                    if state in (None, "Stopped"):
                        break
                    await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                    delay = min(delay * 2, 1.0)
        await hosts.run_on(host_uuid, lambda c: destroy_domain(c, uuid), f"powering VM {uuid} off")

    def cpu_mode(self) -> str | None:
        mode = self.node.configs.get(VM_CPU_MODE.category, VM_CPU_MODE.name)
        return None if mode == "none" else str(mode)

    def refuse_on_test_driver(self, host_uuid: str, what: str) -> None:
        lh = self.service.hosts.connections.get(host_uuid)
        if lh is not None and lh.uri.is_test:
            raise VmErrors.exc("1005", f"{what} is not possible on host {host_uuid}: libvirt's test driver "
                                       f"(libvirt 9.0) cannot do it; stop the VM first or use a QEMU host")

    # -- create -------------------------------------------------------------------------------

    @handles(APICreateVmInstanceMsg)
    async def create(self, msg: APICreateVmInstanceMsg) -> APIVmInstanceEvent:
        if msg.instance_offering_uuid is not None:
            offering = await self.service.offerings.get(msg.instance_offering_uuid)
            cpu, memory, strategy = offering.cpu_num, offering.memory_size, offering.allocator_strategy
        else:
            cpu, memory = check_vm_size(msg.cpu_num, msg.memory_size)
            strategy = None
        name = check_name(msg.name)
        uuid = new_uuid()
        vm = VmInstanceInventory(uuid=uuid, name=name, state="Starting", image_uuid=msg.image_uuid,
                                 instance_offering_uuid=msg.instance_offering_uuid, cpu_num=cpu, memory_size=memory,
                                 description=msg.description, zone_uuid=msg.zone_uuid, cluster_uuid=msg.cluster_uuid)
        spec = VmInstanceSpec(vm=vm, account_uuid=msg.account_uuid, image_uuid=msg.image_uuid,
                              l3_network_uuids=list(msg.l3_network_uuids), root_disk_size=msg.root_disk_size,
                              data_disk_offering_uuids=list(msg.data_disk_offering_uuids),
                              data_disk_sizes=list(msg.data_disk_sizes), system_tags=list(msg.system_tags))
        await self.node.hooks.vm_create_check(spec)

        def insert() -> None:
            _INSERT_VM.run(VmInstanceVO(uuid=uuid, name=name, description=msg.description, state="Starting",
                                        image_uuid=msg.image_uuid, instance_offering_uuid=msg.instance_offering_uuid,
                                        cpu_num=cpu, memory_size=memory, zone_uuid=msg.zone_uuid,
                                        cluster_uuid=msg.cluster_uuid))
            _INSERT_CREATING.run(VmCreatingVO(vm_uuid=uuid))
            own_sync(uuid, "VmInstance", msg.account_uuid)
            self.node.tags.create_sync(uuid, "VmInstance", msg.system_tags)

        placement = AllocationRequest(vm_uuid=uuid, cpu=cpu, memory=memory, zone_uuid=msg.zone_uuid,
                                      cluster_uuid=msg.cluster_uuid, host_uuid=msg.host_uuid, strategy=strategy)
        data: dict[str, Any] = {"spec": spec, "node": self.node, "placement": placement, "strategy": msg.strategy}

        async def work() -> VmInstanceInventory:
            await self.atomic(insert)
            try:
                await self.node.flow_chain(VmCreateFlows.CHAIN).run(data)
            except BaseException as exc:
                await self._undo_create(spec, left_on=data.get("kvm_domain_left"))
                if isinstance(exc, FlowError):
                    raise VmErrors.exc("1007", f"creating VM {name} failed", cause=exc.error) from exc
                raise
            host = spec.destination_host
            assert host is not None
            # The job's progress becomes 100 when it succeeds: no separate report (a write per VM).
            return await self._finish_create(uuid, msg.strategy == "CreateStopped", host.uuid)

        return APIVmInstanceEvent(inventory=await self.queue(uuid, work))

    async def _finish_create(self, uuid: str, stopped: bool, host_uuid: str) -> VmInstanceInventory:
        """The create succeeded: in one transaction the VM leaves ``Starting`` (``Running``, or
        ``Stopped`` giving its host back), stops being a create in progress, and is read with
        its NICs and volumes; that inventory is announced (``zstack_vm_state_changed``) and
        returned. (Separately these were eleven statements in four transactions.)"""
        to = "Stopped" if stopped else "Running"

        def tx() -> tuple[str, VmInstanceInventory]:
            from .allocator import give_back_sync

            if stopped:
                row = VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid)
                if row is None:
                    raise VmErrors.exc("1002", f"no VM instance {uuid}")
                old = str(row.state)
                give_back_sync(uuid, state=to, last_host_uuid=host_uuid)
            else:
                old = "Starting"
                moved = _STARTED.run(to=to, host=host_uuid, vm=uuid, old=old).rowcount
                if moved != 1:  # nothing else changes a VM its create holds; say what happened
                    row = VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid)
                    if row is None:
                        raise VmErrors.exc("1002", f"no VM instance {uuid}")
                    raise VmErrors.exc("1001", f"VM {uuid} is {row.state}, expected {old}", state=row.state)
            _CREATED.run(vm=uuid)
            row = _VM.rows(VmInstanceVO, vm=uuid)[0]
            return old, attach_children_sync(self.node, [row.to_inventory()])[0]

        old, inv = await self.atomic(tx)
        if old != to:
            await self.node.hooks.vm_state_changed(inv, old, to)
        return inv

    async def _undo_create(self, spec: VmInstanceSpec, left_on: str | None = None) -> None:
        """After a failed create: every plugin releases what it prepared, and the VM is gone.

        ``left_on``: the host whose domain of the VM could not be removed (it was away); a
        ``LeftDomainVO`` row lets the VM sync remove it when the host lists it again."""
        await self.node.hooks.vm_release_resource(spec, "rollback")
        uuid = spec.vm.uuid
        await self.service.allocator.release(uuid)  # the rollback did it; this makes sure

        def remove() -> None:
            VmInstanceVO.delete().where(VmInstanceVO.uuid == uuid).execute()
            VmCreatingVO.delete().where(VmCreatingVO.vm_uuid == uuid).execute()
            if left_on is not None:
                remember_left_domain_sync(uuid, left_on)
            forget_resource_sync(self.node, uuid)

        await self.atomic(remove)

    async def roll_back_interrupted_creates(self, uuids: Sequence[str], host_wait: float = 60.0) -> None:
        """Creates a previous run of the node left unfinished (killed mid-create) are undone as a
        failed create is: the domain goes, every plugin releases what it prepared (volumes, NICs,
        addresses), the capacity comes back and the VM is gone. Runs once the VMs' hosts are back
        (at most ``host_wait`` seconds each: a host still away keeps what is on it, and the
        consistency checker shows it when it returns)."""
        for uuid in uuids:
            try:
                await self.queue(uuid, lambda uuid=uuid: self._roll_back_create(uuid, host_wait))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rolling back the interrupted create of VM %s failed", uuid)

    async def _roll_back_create(self, uuid: str, host_wait: float) -> None:
        vm = await self.db(lambda: VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid))
        if vm is None:
            return  # rolled back already (a domain left on a host that was away has its LeftDomainVO)
        if vm.state != "Starting":  # the create had ended: nothing to undo
            await self.db(lambda: VmCreatingVO.delete().where(VmCreatingVO.vm_uuid == uuid).execute())
            return
        host = None
        domain_left = False
        if vm.host_uuid is not None:
            hosts = self.service.hosts
            loop = asyncio.get_running_loop()
            deadline = loop.time() + host_wait
            while loop.time() < deadline:
                row = await self.db(lambda: HostVO.get_or_none(HostVO.uuid == vm.host_uuid))
                lh = hosts.connections.get(vm.host_uuid)
                if row is None or (row.status == "Connected" and lh is not None and lh.is_open):
                    break
                await asyncio.sleep(0.2)
            if row is not None:
                host = row.to_inventory()
                try:
                    await hosts.run_on(vm.host_uuid, lambda c: destroy_domain(c, uuid), f"removing VM {uuid}")
                except ZStackError as exc:
                    log.warning("VM %s: its half-created domain could not be removed yet: %s", uuid, exc.error)
                    domain_left = True
        log.warning("VM %s was being created when the node stopped; rolling the create back", uuid)
        spec = await self.spec_of(uuid, host)
        await self.node.hooks.network_services_release(spec)
        await self._undo_create(spec, left_on=vm.host_uuid if domain_left else None)

    # -- update -------------------------------------------------------------------------------

    @handles(APIUpdateVmInstanceMsg)
    async def update(self, msg: APIUpdateVmInstanceMsg) -> APIVmInstanceEvent:
        fields: dict[str, Any] = {}
        if msg.name is not None:
            fields["name"] = check_name(msg.name)
        if msg.description is not None:
            check_description(msg.description)
            fields["description"] = msg.description
        await self.get(msg.uuid)
        if fields:
            await self.db(lambda: VmInstanceVO.update(**fields).where(VmInstanceVO.uuid == msg.uuid).execute())
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    # -- start --------------------------------------------------------------------------------

    @handles(APIStartVmInstanceMsg)
    async def start_api(self, msg: APIStartVmInstanceMsg) -> APIVmInstanceEvent:
        await self.get(msg.uuid)
        await self.queue(msg.uuid, lambda: self.start(msg.uuid, msg.host_uuid, msg.cluster_uuid))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    async def start(self, uuid: str, host_uuid: str | None = None, cluster_uuid: str | None = None) -> None:
        vm = await self.get(uuid)
        if vm.state == "Running":
            return
        self.require(vm, ("Stopped",), "start")
        inv = await self.inventory(uuid)
        await self.node.hooks.vm_before_start(inv)
        await self.change(uuid, "Starting", expect=("Stopped",))
        placed: str | None = None  # the host the domain may have been started on
        try:
            spec = await self.spec_of(uuid, None)
            request = AllocationRequest(vm_uuid=uuid, cpu=vm.cpu_num, memory=vm.memory_size, zone_uuid=vm.zone_uuid,
                                        cluster_uuid=cluster_uuid, host_uuid=host_uuid, strategy=await self._strategy(vm))
            host = await self.service.allocator.allocate(request, spec)
            spec.destination_host = host
            spec.vm = attrs.evolve(spec.vm, host_uuid=host.uuid, cluster_uuid=host.cluster_uuid,
                                   zone_uuid=host.zone_uuid)
            placed = host.uuid
            await self.instantiate(spec, host.uuid)
        except BaseException as exc:
            await self.change(uuid, "Stopped", release=True)
            if placed is not None:
                await self._undo_start(uuid, placed)
            error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1004", str(exc))
            await self.node.hooks.vm_failed_to_start(await self.inventory(uuid), error)
            raise
        await self.change(uuid, "Running", last_host_uuid=host.uuid)
        await self.node.hooks.vm_after_start(await self.inventory(uuid))

    async def _undo_start(self, uuid: str, host_uuid: str) -> None:
        """A start that failed may have launched QEMU all the same (libvirtd killed before it
        answered, a call given up on that went on): remove the domain, or, if the host cannot
        be reached, leave it to the VM sync (:meth:`domain_left`)."""
        try:
            await self.service.hosts.run_on(host_uuid, lambda c: destroy_domain(c, uuid),
                                            f"removing the domain of VM {uuid}, whose start failed")
        except ZStackError as exc:
            log.warning("VM %s: its start failed and its domain could not be removed yet (%s)", uuid, exc.error)
            await self.domain_left(uuid, host_uuid)

    async def domain_left(self, uuid: str, host_uuid: str) -> None:
        """VM ``uuid``'s domain on ``host_uuid`` should be gone but the host could not be reached
        to remove it: the VM sync removes it when the host lists it again (``LeftDomainVO``)."""
        await self.db(remember_left_domain_sync, uuid, host_uuid)

    async def _strategy(self, vm: VmInstanceVO) -> str | None:
        if vm.instance_offering_uuid is None:
            return None
        offering = await self.db(lambda: InstanceOfferingVO.get_or_none(InstanceOfferingVO.uuid == vm.instance_offering_uuid))
        return offering.allocator_strategy if offering is not None else None

    # -- stop ---------------------------------------------------------------------------------

    @handles(APIStopVmInstanceMsg)
    async def stop_api(self, msg: APIStopVmInstanceMsg) -> APIVmInstanceEvent:
        if msg.type not in ("grace", "cold"):
            raise invalid_argument(f"type must be grace or cold, got {msg.type!r}", "$.type")
        await self.get(msg.uuid)
        await self.queue(msg.uuid, lambda: self.stop(msg.uuid, graceful=msg.type == "grace"))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    async def stop(self, uuid: str, graceful: bool = True, force: bool = False) -> None:
        """Power the VM off and give its host back. ``force``: even when its host cannot be
        reached (the domain may run on; the VM sync removes it when the host is back)."""
        vm = await self.get(uuid)
        if vm.state == "Stopped":
            return
        self.require(vm, ON_HOST, "stop")
        inv = await self.inventory(uuid)
        await self.node.hooks.vm_before_stop(inv)
        previous = vm.state
        await self.change(uuid, "Stopping", expect=(previous,))
        host_uuid = vm.host_uuid
        try:
            if host_uuid is not None:
                await self.power_off(host_uuid, uuid, graceful)
        except BaseException as exc:
            if not force:
                await self.change(uuid, previous)
                error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1008", str(exc))
                await self.node.hooks.vm_failed_to_stop(await self.inventory(uuid), error)
                if isinstance(exc, ZStackError):
                    raise VmErrors.exc("1008", f"stopping VM {uuid} failed", cause=exc.error) from exc
                raise
            log.warning("VM %s: forced stop could not reach its host: %s", uuid, exc)
            if host_uuid is not None:
                await self.domain_left(uuid, host_uuid)
        await self.change(uuid, "Stopped", release=True, last_host_uuid=host_uuid)
        spec = await self.spec_of(uuid, None)
        await self.node.hooks.network_services_release(spec)
        await self.node.hooks.vm_after_stop(await self.inventory(uuid))

    # -- reboot -------------------------------------------------------------------------------

    @handles(APIRebootVmInstanceMsg)
    async def reboot_api(self, msg: APIRebootVmInstanceMsg) -> APIVmInstanceEvent:
        await self.get(msg.uuid)
        await self.queue(msg.uuid, lambda: self.reboot(msg.uuid))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    async def reboot(self, uuid: str) -> None:
        """Power off (gracefully, then forcibly) and start again on the same host, keeping its
        capacity there; the domain is redefined, so devices added meanwhile take effect."""
        vm = await self.get(uuid)
        self.require(vm, ("Running",), "reboot")
        await self.node.hooks.vm_before_reboot(await self.inventory(uuid))
        await self.change(uuid, "Rebooting", expect=("Running",))
        host_uuid = vm.host_uuid
        assert host_uuid is not None
        try:
            await self.power_off(host_uuid, uuid, graceful=True)
            spec = await self.spec_of(uuid, await self.service.hosts.inventory(host_uuid))
            await self.instantiate(spec, host_uuid)
        except BaseException as exc:
            # What the domain is now decides the VM's state. If the host cannot tell (libvirtd
            # gone mid-reboot), the domain may still run: the VM is Unknown, keeping its host and
            # capacity, until the VM sync sees the host again (Stopped here would leave a running
            # guest behind a VM that claims none).
            try:
                state = await self.service.hosts.run_on(host_uuid, lambda c: domain_state(c, uuid), "reading VM")
            except ZStackError:
                state = "Unknown"
            if state in ("Running", "Paused", "Unknown"):
                await self.change(uuid, state)
            else:
                await self.change(uuid, "Stopped", release=True, last_host_uuid=host_uuid)
            error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1004", str(exc))
            await self.node.hooks.vm_failed_to_reboot(await self.inventory(uuid), error)
            raise
        await self.change(uuid, "Running")
        await self.node.hooks.vm_after_reboot(await self.inventory(uuid))

    # -- pause / resume -----------------------------------------------------------------------

    @handles(APIPauseVmInstanceMsg)
    async def pause_api(self, msg: APIPauseVmInstanceMsg) -> APIVmInstanceEvent:
        async def work() -> None:
            vm = await self.get(msg.uuid)
            if vm.state == "Paused":
                return
            self.require(vm, ("Running",), "pause")
            assert vm.host_uuid is not None
            await self.service.hosts.run_on(vm.host_uuid, lambda c: pause(c, msg.uuid), f"pausing VM {msg.uuid}")
            await self.change(msg.uuid, "Paused", expect=("Running",))

        await self.get(msg.uuid)
        await self.queue(msg.uuid, work)
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    @handles(APIResumeVmInstanceMsg)
    async def resume_api(self, msg: APIResumeVmInstanceMsg) -> APIVmInstanceEvent:
        async def work() -> None:
            vm = await self.get(msg.uuid)
            if vm.state == "Running":
                return
            self.require(vm, ("Paused",), "resume")
            assert vm.host_uuid is not None
            await self.service.hosts.run_on(vm.host_uuid, lambda c: resume(c, msg.uuid), f"resuming VM {msg.uuid}")
            await self.change(msg.uuid, "Running", expect=("Paused",))

        await self.get(msg.uuid)
        await self.queue(msg.uuid, work)
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    # -- destroy / recover / expunge ----------------------------------------------------------

    @handles(APIDestroyVmInstanceMsg)
    async def destroy_api(self, msg: APIDestroyVmInstanceMsg) -> APIVmInstanceEvent:
        mode = cascade_mode(msg.delete_mode)
        await self.get(msg.uuid)
        await self.queue(msg.uuid, lambda: self.destroy(msg.uuid, force=mode == "force"))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    async def destroy(self, uuid: str, force: bool = False) -> None:
        """Power off, give the host back, state Destroyed (recoverable until expunged)."""
        vm = await self.get(uuid)
        if vm.state == "Destroyed":
            return
        self.require(vm, (*ON_HOST, "Stopped"), "destroy")
        inv = await self.inventory(uuid)
        if not force:
            await self.node.hooks.vm_before_destroy(inv)
        previous = vm.state
        await self.change(uuid, "Destroying", expect=(previous,))
        host_uuid = vm.host_uuid
        try:
            if host_uuid is not None:
                await self.service.hosts.run_on(host_uuid, lambda c: destroy_domain(c, uuid), f"destroying VM {uuid}")
        except BaseException as exc:
            if not force:
                await self.change(uuid, previous)
                error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1004", str(exc))
                await self.node.hooks.vm_failed_to_destroy(await self.inventory(uuid), error)
                raise
            log.warning("VM %s: forced destroy could not reach its host: %s", uuid, exc)
            if host_uuid is not None:
                await self.domain_left(uuid, host_uuid)
        await self.change(uuid, "Destroyed", release=True, last_host_uuid=host_uuid or vm.last_host_uuid)
        if host_uuid is not None:
            await self.node.hooks.network_services_release(await self.spec_of(uuid, None))
        await self.node.hooks.vm_after_destroy(await self.inventory(uuid))

    @handles(APIRecoverVmInstanceMsg)
    async def recover_api(self, msg: APIRecoverVmInstanceMsg) -> APIVmInstanceEvent:
        async def work() -> None:
            vm = await self.get(msg.uuid)
            self.require(vm, ("Destroyed",), "recover")
            await self.change(msg.uuid, "Stopped", expect=("Destroyed",))

        await self.get(msg.uuid)
        await self.queue(msg.uuid, work)
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    @handles(APIExpungeVmInstanceMsg)
    async def expunge_api(self, msg: APIExpungeVmInstanceMsg) -> APIVmInstanceEvent:
        await self.get(msg.uuid)
        await self.queue(msg.uuid, lambda: self.expunge(msg.uuid))
        return APIVmInstanceEvent()

    async def expunge(self, uuid: str, force: bool = False) -> None:
        """Every service releases what it holds for the VM (``VmReleaseFlows`` and
        ``zstack_vm_release_resource(reason="expunge")``), then the VM is deleted."""
        vm = await self.get(uuid)
        self.require(vm, ("Destroyed",), "expunge")
        await self.change(uuid, "Expunging", expect=("Destroyed",))
        spec = await self.spec_of(uuid, None)
        try:
            await self.node.flow_chain(VmReleaseFlows.CHAIN).run({"spec": spec, "node": self.node})
        except FlowError as exc:
            if not force:
                await self.change(uuid, "Destroyed")
                raise VmErrors.exc("1004", f"expunging VM {uuid} failed", cause=exc.error) from exc
            log.warning("VM %s: forced expunge goes on after %s", uuid, exc.error)
        await self.node.hooks.vm_release_resource(spec, "expunge")

        def remove() -> None:
            VmInstanceVO.delete().where(VmInstanceVO.uuid == uuid).execute()
            forget_resource_sync(self.node, uuid)

        await self.atomic(remove)
        await self.node.hooks.vm_state_changed(attrs.evolve(spec.vm, state="Expunged"), "Expunging", "Expunged")

    # -- cascade ------------------------------------------------------------------------------

    async def check_removable(self, uuids: Sequence[str]) -> None:
        """Refuse (cascade ``check``) when a VM to remove runs on a host that is not Connected:
        its domain could not be powered off. ``deleteMode=Enforcing`` goes ahead anyway."""
        if not uuids:
            return

        def stuck() -> list[tuple[str, str]]:
            q = (VmInstanceVO.select(VmInstanceVO.uuid, HostVO.uuid)
                 .join(HostVO, on=(VmInstanceVO.host_uuid == HostVO.uuid))
                 .where(VmInstanceVO.uuid.in_(list(uuids)) & (HostVO.status != "Connected")))
            rows: Any = q.tuples()
            return [(str(vm), str(host)) for vm, host in rows]

        blocked = await self.db(stuck)
        if blocked:
            vm_uuid, host_uuid = blocked[0]
            raise VmErrors.exc("1001", f"VM {vm_uuid} runs on host {host_uuid}, which is not connected; delete "
                                       f"with deleteMode Enforcing to remove it anyway")

    async def delete_by_cascade(self, uuid: str, force: bool) -> None:
        """Destroy and expunge a VM whose cluster or zone is being deleted."""
        async def work() -> None:
            if await self.db(lambda: VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid)) is None:
                return
            await self.destroy(uuid, force=force)
            await self.expunge(uuid, force=force)

        await self.queue(uuid, work)

    async def leave_host(self, uuid: str, host_uuids: Sequence[str], force: bool) -> None:
        """The VM's host is being deleted: stop the VM there and forget the host."""
        async def work() -> None:
            vm = await self.db(lambda: VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid))
            if vm is None:
                return
            if vm.host_uuid in host_uuids and vm.state in ON_HOST:
                await self.stop(uuid, graceful=False, force=force)
            await self.db(lambda: VmInstanceVO.update(last_host_uuid=None).where(
                (VmInstanceVO.uuid == uuid) & VmInstanceVO.last_host_uuid.in_(list(host_uuids))).execute())

        await self.queue(uuid, work)

    # -- hosts coming and going ---------------------------------------------------------------

    async def host_lost(self, host_uuid: str) -> None:
        """The host disconnected: its Running and Paused VMs are Unknown until it is back."""
        uuids = await self.db(lambda: [v.uuid for v in VmInstanceVO.select(VmInstanceVO.uuid).where(
            (VmInstanceVO.host_uuid == host_uuid) & VmInstanceVO.state.in_(["Running", "Paused"]))])
        for uuid in uuids:
            try:
                await self.change(uuid, "Unknown", expect=("Running", "Paused"))
            except ZStackError:
                pass  # an operation changed it meanwhile; the reconcile on reconnect settles it

    async def recover_interrupted(self) -> None:
        """At start-up: VMs a previous run left mid-operation get a state the reconcile can work
        from (``Unknown`` while they hold a host)."""
        rows = await self.db(lambda: list(VmInstanceVO.select().where(VmInstanceVO.state.in_(list(TRANSITIONAL)))))
        creating = set(await self.db(lambda: [r.vm_uuid for r in VmCreatingVO.select()]))
        self.interrupted_creates = sorted(creating)  # see roll_back_interrupted_creates
        for row in rows:
            if row.uuid in creating and row.state == "Starting":
                continue
            target = TRANSITIONAL[row.state] or ("Unknown" if row.host_uuid else "Stopped")
            if target == "Unknown" and row.host_uuid is None:
                target = "Stopped"
            log.warning("VM %s was left %s by a previous run; now %s", row.uuid, row.state, target)
            await self.change(row.uuid, target)






