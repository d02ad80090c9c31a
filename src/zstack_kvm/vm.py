"""VM instances: create (a flow chain), start, stop, reboot, pause, resume, destroy, recover,
expunge, migrate, console address, and attaching/detaching volumes and NICs.

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

from zstack_core import ApiInterceptor, ErrorCode, FlowError, ZStackError, handles, invalid_argument
from zstack_core.db import new_uuid
from zstack_core.header import (
    DiskTO,
    HostInventory,
    NicTO,
    VmCreateFlows,
    VmInstanceInventory,
    VmInstanceSpec,
    VmNicInventory,
    VmReleaseFlows,
    VolumeInventory,
)
from zstack_core.header.messages import (
    AllocateVmNicMsg,
    ReleaseVmNicMsg,
    VmAttachDiskMsg,
    VmAttachNicMsg,
    VmDetachDiskMsg,
    VmDetachNicMsg,
)
from zstack_core.ownership import disown_sync, own_sync, owner_of_sync

from .allocator import AllocationRequest, move_sync, unreserve_sync
from .api import (
    APIAttachL3NetworkToVmMsg,
    APICreateVmInstanceMsg,
    APIDestroyVmInstanceMsg,
    APIDetachL3NetworkFromVmMsg,
    APIExpungeVmInstanceMsg,
    APIGetVmConsoleAddressMsg,
    APIGetVmConsoleAddressReply,
    APIMigrateVmMsg,
    APIPauseVmInstanceMsg,
    APIRebootVmInstanceMsg,
    APIRecoverVmInstanceMsg,
    APIResumeVmInstanceMsg,
    APIStartVmInstanceMsg,
    APIStopVmInstanceMsg,
    APIUpdateVmInstanceMsg,
    APIVmInstanceEvent,
    APIVmNicEvent,
)
from .checks import cascade_mode, check_description, check_name
from .configs import BOOT_ORDER, VM_CPU_MODE, VM_STOP_TIMEOUT
from .domain import disk_from_to, interface_from_to
from .errors import ClusterErrors, HostErrors, VmErrors, ZoneErrors
from .hypervisor import (
    build_domain,
    define_and_start,
    destroy_domain,
    domain_state,
    find_device_xml,
    hot_plug,
    hot_unplug,
    migrate_domain,
    pause,
    request_shutdown,
    resume,
)
from .models import ClusterVO, HostVO, InstanceOfferingVO, VmInstanceVO, ZoneVO
from .offering import check_vm_size
from .service import Part
from .zone import forget_resource_sync

__all__ = ["VmApiInterceptor", "VmPart", "attach_children_sync"]

log = logging.getLogger("zstack.kvm.vm")

ON_HOST = ("Running", "Paused", "Unknown")
"""Stable states in which the VM has a domain on ``host_uuid``."""
TRANSITIONAL = {"Starting": None, "Stopping": "Unknown", "Rebooting": "Unknown", "Migrating": "Unknown",
                "Destroying": "Unknown", "Pausing": "Unknown", "Resuming": "Unknown", "Expunging": "Destroyed"}
"""Where a VM left in a transitional state by a stopped node goes when the node starts again
(None: ``Unknown`` if it holds a host, else ``Stopped``)."""
BOOT_DEVICES = ("hd", "cdrom", "network", "fd")


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


def _needs_service(node: Any, resource: str, field: str, value: Any, plugin: str) -> None:
    if resource not in node.query.resources:
        raise VmErrors.exc("1006", f"{field} was given but no installed plugin provides {resource} resources "
                                   f"(install {plugin})", field=field)


async def _must_exist(node: Any, resource: str, uuid: str, field: str) -> Any:
    found = await node.query.find(resource, [("uuid", "=", uuid)])
    if not found:
        raise invalid_argument(f"no {resource} {uuid}", f"$.{field}")
    return found[0]


class VmApiInterceptor(ApiInterceptor):
    """Checks ``CreateVmInstance`` before a job exists: sizes, placement, and that the image,
    networks and disk offerings it names exist (and that a plugin serves them at all)."""

    name = "VmApiInterceptor"
    messages = (APICreateVmInstanceMsg,)

    async def intercept(self, msg: APICreateVmInstanceMsg, node: Any) -> APICreateVmInstanceMsg:  # type: ignore[override]
        check_name(msg.name)
        check_description(msg.description)
        if msg.strategy not in ("InstantStart", "CreateStopped"):
            raise invalid_argument(f"strategy must be InstantStart or CreateStopped, got {msg.strategy!r}", "$.strategy")
        db = node.db
        if msg.instance_offering_uuid is not None:
            if msg.cpu_num is not None or msg.memory_size is not None:
                raise invalid_argument("give either instanceOfferingUuid or cpuNum and memorySize, not both",
                                       "$.instanceOfferingUuid")
            offering = await db.run(lambda: InstanceOfferingVO.get_or_none(
                InstanceOfferingVO.uuid == msg.instance_offering_uuid))
            if offering is None:
                raise VmErrors.exc("1003", f"no instance offering {msg.instance_offering_uuid}",
                                   field="instanceOfferingUuid")
            if offering.state != "Enabled":
                raise VmErrors.exc("1000", f"instance offering {offering.uuid} is {offering.state}",
                                   field="instanceOfferingUuid")
        else:
            if msg.cpu_num is None and msg.memory_size is None:
                raise invalid_argument("instanceOfferingUuid, or cpuNum and memorySize, is required",
                                       "$.instanceOfferingUuid")
            check_vm_size(msg.cpu_num, msg.memory_size)
        await self._placement(msg, db)
        if msg.image_uuid is not None:
            _needs_service(node, "Image", "imageUuid", msg.image_uuid, "zstack-storage")
            await _must_exist(node, "Image", msg.image_uuid, "imageUuid")
        if msg.root_disk_size is not None:
            if msg.root_disk_size <= 0:
                raise invalid_argument(f"rootDiskSize must be positive, got {msg.root_disk_size}", "$.rootDiskSize")
            _needs_service(node, "Volume", "rootDiskSize", msg.root_disk_size, "zstack-storage")
        if len(set(msg.l3_network_uuids)) != len(msg.l3_network_uuids):
            raise invalid_argument("l3NetworkUuids lists a network twice", "$.l3NetworkUuids")
        for i, l3 in enumerate(msg.l3_network_uuids):
            _needs_service(node, "L3Network", "l3NetworkUuids", l3, "zstack-network")
            await _must_exist(node, "L3Network", l3, f"l3NetworkUuids[{i}]")
        for i, offering_uuid in enumerate(msg.data_disk_offering_uuids):
            _needs_service(node, "DiskOffering", "dataDiskOfferingUuids", offering_uuid, "zstack-storage")
            await _must_exist(node, "DiskOffering", offering_uuid, f"dataDiskOfferingUuids[{i}]")
        for i, size in enumerate(msg.data_disk_sizes):
            if size <= 0:
                raise invalid_argument(f"dataDiskSizes[{i}] must be positive, got {size}", f"$.dataDiskSizes[{i}]")
            _needs_service(node, "Volume", "dataDiskSizes", size, "zstack-storage")
        for i, tag in enumerate(msg.system_tags):
            tokens = BOOT_ORDER.tokens(tag)
            if tokens is not None:
                devices = tokens["order"].split(",")
                if not devices or any(d not in BOOT_DEVICES for d in devices):
                    raise invalid_argument(f"bootOrder lists devices from {', '.join(BOOT_DEVICES)}, got "
                                           f"{tokens['order']!r}", f"$.systemTags[{i}]")
        return msg

    @staticmethod
    async def _placement(msg: APICreateVmInstanceMsg, db: Any) -> None:
        zone_uuid, cluster_uuid = msg.zone_uuid, msg.cluster_uuid
        if msg.host_uuid is not None:
            host = await db.run(lambda: HostVO.get_or_none(HostVO.uuid == msg.host_uuid))
            if host is None:
                raise HostErrors.exc("1007", f"no host {msg.host_uuid}", field="hostUuid")
            if cluster_uuid is not None and host.cluster_uuid != cluster_uuid:
                raise invalid_argument(f"host {host.uuid} is not in cluster {cluster_uuid}", "$.hostUuid")
            if zone_uuid is not None and host.zone_uuid != zone_uuid:
                raise invalid_argument(f"host {host.uuid} is not in zone {zone_uuid}", "$.hostUuid")
        if cluster_uuid is not None:
            cluster = await db.run(lambda: ClusterVO.get_or_none(ClusterVO.uuid == cluster_uuid))
            if cluster is None:
                raise ClusterErrors.exc("1000", f"no cluster {cluster_uuid}", field="clusterUuid")
            if zone_uuid is not None and cluster.zone_uuid != zone_uuid:
                raise invalid_argument(f"cluster {cluster_uuid} is not in zone {zone_uuid}", "$.clusterUuid")
        if zone_uuid is not None:
            if await db.run(lambda: ZoneVO.get_or_none(ZoneVO.uuid == zone_uuid)) is None:
                raise ZoneErrors.exc("1000", f"no zone {zone_uuid}", field="zoneUuid")


class VmPart(Part):
    # -- reading ------------------------------------------------------------------------------

    async def get(self, uuid: str, field: str = "uuid") -> VmInstanceVO:
        row = await self.db(lambda: VmInstanceVO.get_or_none(VmInstanceVO.uuid == uuid))
        if row is None:
            raise VmErrors.exc("1002", f"no VM instance {uuid}", field=field)
        return row

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

    def _queue(self, uuid: str, fn: Any) -> Any:
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

    def _hypervisor_unsupported(self, host_uuid: str, what: str) -> None:
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
            VmInstanceVO.create(uuid=uuid, name=name, description=msg.description, state="Starting",
                                image_uuid=msg.image_uuid, instance_offering_uuid=msg.instance_offering_uuid,
                                cpu_num=cpu, memory_size=memory, zone_uuid=msg.zone_uuid, cluster_uuid=msg.cluster_uuid)
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
                await self._undo_create(spec)
                if isinstance(exc, FlowError):
                    raise VmErrors.exc("1007", f"creating VM {name} failed", cause=exc.error) from exc
                raise
            host = spec.destination_host
            assert host is not None
            if msg.strategy == "CreateStopped":
                await self.change(uuid, "Stopped", release=True, last_host_uuid=host.uuid)
            else:
                await self.change(uuid, "Running", last_host_uuid=host.uuid)
            await self.node.api.report_progress(msg.headers.get("job_id"), 100)
            return await self.inventory(uuid)

        return APIVmInstanceEvent(inventory=await self._queue(uuid, work))

    async def _undo_create(self, spec: VmInstanceSpec) -> None:
        """After a failed create: every plugin releases what it prepared, and the VM is gone."""
        await self.node.hooks.vm_release_resource(spec, "rollback")
        uuid = spec.vm.uuid
        await self.service.allocator.release(uuid)  # the rollback did it; this makes sure

        def remove() -> None:
            VmInstanceVO.delete().where(VmInstanceVO.uuid == uuid).execute()
            forget_resource_sync(self.node, uuid)

        await self.atomic(remove)

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
        await self._queue(msg.uuid, lambda: self.start(msg.uuid, msg.host_uuid, msg.cluster_uuid))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    async def start(self, uuid: str, host_uuid: str | None = None, cluster_uuid: str | None = None) -> None:
        vm = await self.get(uuid)
        if vm.state == "Running":
            return
        self.require(vm, ("Stopped",), "start")
        inv = await self.inventory(uuid)
        await self.node.hooks.vm_before_start(inv)
        await self.change(uuid, "Starting", expect=("Stopped",))
        try:
            spec = await self.spec_of(uuid, None)
            request = AllocationRequest(vm_uuid=uuid, cpu=vm.cpu_num, memory=vm.memory_size, zone_uuid=vm.zone_uuid,
                                        cluster_uuid=cluster_uuid, host_uuid=host_uuid, strategy=await self._strategy(vm))
            host = await self.service.allocator.allocate(request, spec)
            spec.destination_host = host
            spec.vm = attrs.evolve(spec.vm, host_uuid=host.uuid, cluster_uuid=host.cluster_uuid,
                                   zone_uuid=host.zone_uuid)
            await self.instantiate(spec, host.uuid)
        except BaseException as exc:
            await self.change(uuid, "Stopped", release=True)
            error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1004", str(exc))
            await self.node.hooks.vm_failed_to_start(await self.inventory(uuid), error)
            raise
        await self.change(uuid, "Running", last_host_uuid=host.uuid)
        await self.node.hooks.vm_after_start(await self.inventory(uuid))

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
        await self._queue(msg.uuid, lambda: self.stop(msg.uuid, graceful=msg.type == "grace"))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    async def stop(self, uuid: str, graceful: bool = True, force: bool = False) -> None:
        """Power the VM off and give its host back. ``force``: even when its host cannot be
        reached (the domain may be left behind; the next reconcile removes it)."""
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
        await self.change(uuid, "Stopped", release=True, last_host_uuid=host_uuid)
        spec = await self.spec_of(uuid, None)
        await self.node.hooks.network_services_release(spec)
        await self.node.hooks.vm_after_stop(await self.inventory(uuid))

    # -- reboot -------------------------------------------------------------------------------

    @handles(APIRebootVmInstanceMsg)
    async def reboot_api(self, msg: APIRebootVmInstanceMsg) -> APIVmInstanceEvent:
        await self.get(msg.uuid)
        await self._queue(msg.uuid, lambda: self.reboot(msg.uuid))
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
            state = None
            try:
                state = await self.service.hosts.run_on(host_uuid, lambda c: domain_state(c, uuid), "reading VM")
            except ZStackError:
                pass
            if state in ("Running", "Paused"):
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
        await self._queue(msg.uuid, work)
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
        await self._queue(msg.uuid, work)
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    # -- destroy / recover / expunge ----------------------------------------------------------

    @handles(APIDestroyVmInstanceMsg)
    async def destroy_api(self, msg: APIDestroyVmInstanceMsg) -> APIVmInstanceEvent:
        mode = cascade_mode(msg.delete_mode)
        await self.get(msg.uuid)
        await self._queue(msg.uuid, lambda: self.destroy(msg.uuid, force=mode == "force"))
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
        await self._queue(msg.uuid, work)
        return APIVmInstanceEvent(inventory=await self.inventory(msg.uuid))

    @handles(APIExpungeVmInstanceMsg)
    async def expunge_api(self, msg: APIExpungeVmInstanceMsg) -> APIVmInstanceEvent:
        await self.get(msg.uuid)
        await self._queue(msg.uuid, lambda: self.expunge(msg.uuid))
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

        await self._queue(uuid, work)

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

        await self._queue(uuid, work)

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
        for row in rows:
            target = TRANSITIONAL[row.state] or ("Unknown" if row.host_uuid else "Stopped")
            if target == "Unknown" and row.host_uuid is None:
                target = "Stopped"
            log.warning("VM %s was left %s by a previous run; now %s", row.uuid, row.state, target)
            await self.change(row.uuid, target)

    # -- migrate ------------------------------------------------------------------------------

    @handles(APIMigrateVmMsg)
    async def migrate_api(self, msg: APIMigrateVmMsg) -> APIVmInstanceEvent:
        await self.get(msg.vm_instance_uuid, "vmInstanceUuid")
        if msg.host_uuid is not None:
            await self.service.hosts.get(msg.host_uuid, "hostUuid")
        await self._queue(msg.vm_instance_uuid, lambda: self.migrate(msg.vm_instance_uuid, msg.host_uuid))
        return APIVmInstanceEvent(inventory=await self.inventory(msg.vm_instance_uuid))

    async def migrate(self, uuid: str, destination_uuid: str | None) -> None:
        """Live-migrate a running VM to another host (chosen by the allocator unless given)."""
        vm = await self.get(uuid)
        self.require(vm, ("Running",), "migrate")
        source = vm.host_uuid
        assert source is not None
        if destination_uuid == source:
            raise VmErrors.exc("1000", f"VM {uuid} already runs on host {source}", field="hostUuid")
        self._hypervisor_unsupported(source, "live migration")
        if destination_uuid is not None:
            self._hypervisor_unsupported(destination_uuid, "live migration")
        spec = await self.spec_of(uuid, None)
        request = AllocationRequest(vm_uuid=uuid, cpu=vm.cpu_num, memory=vm.memory_size, zone_uuid=vm.zone_uuid,
                                    host_uuid=destination_uuid, exclude=(source,))
        dest = await self.service.allocator.allocate(request, spec, place=False)
        inv = await self.inventory(uuid)
        try:
            self._hypervisor_unsupported(dest.uuid, "live migration")
            await self.node.hooks.vm_before_migrate(inv, dest.uuid)
            await self.change(uuid, "Migrating", expect=("Running",))
            try:
                spec.destination_host = dest
                await self.node.hooks.vm_domain_devices(spec)
                dest_lh = self.service.hosts.libvirt_host(dest.uuid)
                if dest_lh.guest is None or dest_lh.conn is None:
                    raise HostErrors.exc("1001", f"host {dest.uuid} is not connected")
                xml = build_domain(spec, dest_lh.guest, listen="127.0.0.1" if dest_lh.uri.is_local else "0.0.0.0",
                                   cpu_mode=self.cpu_mode()).to_xml()
                dest_conn = dest_lh.conn
                await self.service.hosts.run_on(source, lambda c: migrate_domain(c, dest_conn, uuid, xml),
                                                f"migrating VM {uuid} to host {dest.uuid}")
            except BaseException:
                await self.change(uuid, "Running")
                raise
        except BaseException as exc:
            await self.atomic(unreserve_sync, dest.uuid, vm.cpu_num, vm.memory_size)
            error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1004", str(exc))
            await self.node.hooks.vm_failed_to_migrate(inv, dest.uuid, error)
            raise
        await self.atomic(move_sync, uuid, source, dest.uuid)
        await self.change(uuid, "Running")
        await self.node.hooks.vm_after_migrate(await self.inventory(uuid), source)

    async def evacuate(self, uuid: str, host_uuid: str, action: str) -> None:
        """Clear a VM off a host entering maintenance: migrate it, or stop it where migration
        is impossible (test driver, no other host) or the maintenance policy says ``stop``."""
        async def work() -> None:
            vm = await self.get(uuid)
            if vm.host_uuid != host_uuid or vm.state not in ON_HOST:
                return
            if action == "migrate" and vm.state == "Running":
                try:
                    await self.migrate(uuid, None)
                    return
                except ZStackError as exc:
                    log.info("VM %s cannot migrate off host %s (%s); stopping it", uuid, host_uuid, exc.error)
            await self.stop(uuid, graceful=True)

        await self._queue(uuid, work)

    # -- console ------------------------------------------------------------------------------

    @handles(APIGetVmConsoleAddressMsg)
    async def console_address(self, msg: APIGetVmConsoleAddressMsg) -> APIGetVmConsoleAddressReply:
        vm = await self.get(msg.uuid)
        self.require(vm, ("Running", "Paused"), "a console address")
        assert vm.host_uuid is not None
        host = await self.service.hosts.inventory(vm.host_uuid)
        backends = [b for b in self.node.extension("console_backends") if b.hypervisor_type == host.hypervisor_type]
        if not backends:
            raise VmErrors.exc("1005", f"no console backend for hypervisor {host.hypervisor_type}")
        address = await backends[0].console_address(await self.inventory(msg.uuid), host)
        return APIGetVmConsoleAddressReply(host_ip=address.hostname, port=address.port, protocol=address.protocol)

    # -- devices: volumes and NICs ------------------------------------------------------------

    async def _hot(self, uuid: str, fn: Any) -> Any:
        """Run ``fn(vm)`` under the VM's queue when the VM has a domain (hot-plug); otherwise at
        once: a stopped VM gets the device at its next start anyway, and not queueing lets
        storage and network detach devices while compute expunges the VM."""
        vm = await self.get(uuid, "vmInstanceUuid")
        if vm.state not in ("Running", "Paused"):
            return await fn(vm)

        async def queued() -> Any:
            return await fn(await self.get(uuid, "vmInstanceUuid"))

        return await self._queue(uuid, queued)

    async def attach_device(self, vm: VmInstanceVO, xml: str, what: str) -> None:
        if vm.state in ("Running", "Paused") and vm.host_uuid is not None:
            self._hypervisor_unsupported(vm.host_uuid, f"hot-plugging {what} into running VM {vm.uuid}")
            await self.service.hosts.run_on(vm.host_uuid, lambda c: hot_plug(c, vm.uuid, xml),
                                            f"hot-plugging {what} into VM {vm.uuid}")
        elif vm.state in ("Destroyed", "Expunging", "Destroying"):
            raise VmErrors.exc("1001", f"VM {vm.uuid} is {vm.state}; devices cannot be attached to it")

    async def detach_device(self, vm: VmInstanceVO, what: str, *, mac: str | None = None,
                            disk: DiskTO | None = None) -> None:
        if vm.state in ("Running", "Paused") and vm.host_uuid is not None:
            self._hypervisor_unsupported(vm.host_uuid, f"unplugging {what} from running VM {vm.uuid}")
            host_uuid = vm.host_uuid

            def unplug(conn: Any) -> None:
                xml = find_device_xml(conn, vm.uuid, mac=mac, disk=disk)
                if xml is not None:
                    hot_unplug(conn, vm.uuid, xml)

            await self.service.hosts.run_on(host_uuid, unplug, f"unplugging {what} from VM {vm.uuid}")

    @handles(VmAttachDiskMsg)
    async def attach_disk(self, msg: VmAttachDiskMsg) -> None:
        async def work(vm: VmInstanceVO) -> None:
            inv = await self.inventory(vm.uuid)
            await self.node.hooks.vm_before_attach_volume(inv, msg.volume)
            try:
                await self.attach_device(vm, disk_from_to(msg.disk).device_xml(), f"volume {msg.volume.uuid}")
            except ZStackError as exc:
                await self.node.hooks.vm_failed_to_attach_volume(inv, msg.volume, exc.error)
                raise
            await self.node.hooks.vm_after_attach_volume(await self.inventory(vm.uuid), msg.volume)

        await self._hot(msg.vm_instance_uuid, work)

    @handles(VmDetachDiskMsg)
    async def detach_disk(self, msg: VmDetachDiskMsg) -> None:
        async def work(vm: VmInstanceVO) -> None:
            inv = await self.inventory(vm.uuid)
            await self.node.hooks.vm_before_detach_volume(inv, msg.volume)
            await self.detach_device(vm, f"volume {msg.volume.uuid}", disk=msg.disk)
            await self.node.hooks.vm_after_detach_volume(await self.inventory(vm.uuid), msg.volume)

        await self._hot(msg.vm_instance_uuid, work)

    async def _attach_nic(self, vm: VmInstanceVO, nic: VmNicInventory, nic_to: NicTO) -> None:
        inv = await self.inventory(vm.uuid)
        await self.node.hooks.vm_before_attach_nic(inv, nic)
        await self.attach_device(vm, interface_from_to(nic_to).device_xml(), f"NIC {nic.uuid}")
        await self.node.hooks.vm_after_attach_nic(await self.inventory(vm.uuid), nic)

    async def _detach_nic(self, vm: VmInstanceVO, nic: VmNicInventory) -> None:
        inv = await self.inventory(vm.uuid)
        await self.node.hooks.vm_before_detach_nic(inv, nic)
        await self.detach_device(vm, f"NIC {nic.uuid}", mac=nic.mac)
        await self.node.hooks.vm_after_detach_nic(await self.inventory(vm.uuid), nic)

    @handles(VmAttachNicMsg)
    async def attach_nic(self, msg: VmAttachNicMsg) -> None:
        await self._hot(msg.vm_instance_uuid, lambda vm: self._attach_nic(vm, msg.nic, msg.nic_to))

    @handles(VmDetachNicMsg)
    async def detach_nic(self, msg: VmDetachNicMsg) -> None:
        await self._hot(msg.vm_instance_uuid, lambda vm: self._detach_nic(vm, msg.nic))

    def _network_required(self) -> None:
        if not self.node.bus.has_service("network") or "VmNic" not in self.node.query.resources:
            raise VmErrors.exc("1006", "attaching L3 networks needs the network service (install zstack-network)")

    @handles(APIAttachL3NetworkToVmMsg)
    async def attach_l3(self, msg: APIAttachL3NetworkToVmMsg) -> APIVmNicEvent:
        self._network_required()
        await self.get(msg.vm_instance_uuid, "vmInstanceUuid")

        async def work() -> VmNicInventory:
            vm = await self.get(msg.vm_instance_uuid, "vmInstanceUuid")
            self.require(vm, ("Running", "Paused", "Stopped"), "attaching an L3 network")
            if vm.state != "Stopped":
                assert vm.host_uuid is not None
                self._hypervisor_unsupported(vm.host_uuid, f"hot-plugging a NIC into running VM {vm.uuid}")
            nics = await self.node.query.find("VmNic", [("vmInstanceUuid", "=", vm.uuid)])
            if any(n.l3_network_uuid == msg.l3_network_uuid for n in nics):
                raise invalid_argument(f"VM {vm.uuid} already has a NIC on L3 network {msg.l3_network_uuid}",
                                       "$.l3NetworkUuid")
            device_id = max((n.device_id for n in nics), default=-1) + 1
            reply = await self.node.bus.call_ok(AllocateVmNicMsg(
                vm_instance_uuid=vm.uuid, l3_network_uuid=msg.l3_network_uuid, ip=msg.static_ip,
                device_id=device_id, account_uuid=msg.account_uuid))
            nic, nic_to = reply.nic, reply.nic_to
            try:
                await self._attach_nic(vm, nic, nic_to)
            except BaseException:
                await self.node.bus.call(ReleaseVmNicMsg(nic_uuid=nic.uuid))
                raise
            return nic  # type: ignore[no-any-return]

        nic = await self._queue(msg.vm_instance_uuid, work)
        return APIVmNicEvent(inventory=await self.inventory(msg.vm_instance_uuid), nic=nic)

    @handles(APIDetachL3NetworkFromVmMsg)
    async def detach_l3(self, msg: APIDetachL3NetworkFromVmMsg) -> APIVmNicEvent:
        self._network_required()
        found = await self.node.query.find("VmNic", [("uuid", "=", msg.vm_nic_uuid)])
        if not found:
            raise invalid_argument(f"no VM NIC {msg.vm_nic_uuid}", "$.vmNicUuid")
        nic = found[0]

        async def work() -> None:
            vm = await self.get(nic.vm_instance_uuid, "vmNicUuid")
            await self._detach_nic(vm, nic)
            reply = await self.node.bus.call(ReleaseVmNicMsg(nic_uuid=nic.uuid))
            if reply.error is not None:
                raise ZStackError(reply.error)

        await self._queue(nic.vm_instance_uuid, work)
        return APIVmNicEvent(inventory=await self.inventory(nic.vm_instance_uuid), nic=nic)
