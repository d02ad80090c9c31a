"""Live migration, and clearing a host that enters maintenance.

Migrating reserves the CPUs and memory on the destination first (without moving the VM), asks
libvirt to migrate (``virDomainMigrate3``: live, persistent at the destination, undefined at
the source), then moves the VM's capacity from source to destination in one transaction; a
failure gives the reservation back. libvirt's test driver cannot migrate, and neither can two
hosts on one libvirtd: there, maintenance stops the VMs instead.
"""

from __future__ import annotations

import logging

from zstack_core import ZStackError, handles

from .allocator import AllocationRequest, move_sync, unreserve_sync
from .api import APIMigrateVmMsg, APIVmInstanceEvent
from .errors import HostErrors, VmErrors
from .hypervisor import build_domain, migrate_domain
from .service import Part
from .vm import ON_HOST, VmPart

__all__ = ["MigrationPart"]

log = logging.getLogger("zstack.kvm.migration")


class MigrationPart(Part):
    @property
    def vms(self) -> VmPart:
        return self.service.vms

    @handles(APIMigrateVmMsg)
    async def migrate_api(self, msg: APIMigrateVmMsg) -> APIVmInstanceEvent:
        await self.vms.get(msg.vm_instance_uuid, "vmInstanceUuid")
        if msg.host_uuid is not None:
            await self.service.hosts.get(msg.host_uuid, "hostUuid")
        await self.vms.queue(msg.vm_instance_uuid, lambda: self.migrate(msg.vm_instance_uuid, msg.host_uuid))
        return APIVmInstanceEvent(inventory=await self.vms.inventory(msg.vm_instance_uuid))

    async def migrate(self, uuid: str, destination_uuid: str | None) -> None:
        """Live-migrate a running VM to another host (chosen by the allocator unless given)."""
        vm = await self.vms.get(uuid)
        self.vms.require(vm, ("Running",), "migrate")
        source = vm.host_uuid
        assert source is not None
        if destination_uuid == source:
            raise VmErrors.exc("1000", f"VM {uuid} already runs on host {source}", field="hostUuid")
        self.vms.refuse_on_test_driver(source, "live migration")
        if destination_uuid is not None:
            self.vms.refuse_on_test_driver(destination_uuid, "live migration")
        spec = await self.vms.spec_of(uuid, None)
        request = AllocationRequest(vm_uuid=uuid, cpu=vm.cpu_num, memory=vm.memory_size, zone_uuid=vm.zone_uuid,
                                    host_uuid=destination_uuid, exclude=(source,))
        dest = await self.service.allocator.allocate(request, spec, place=False)
        inv = await self.vms.inventory(uuid)
        try:
            self.vms.refuse_on_test_driver(dest.uuid, "live migration")
            await self.node.hooks.vm_before_migrate(inv, dest.uuid)
            await self.vms.change(uuid, "Migrating", expect=("Running",))
            try:
                spec.destination_host = dest
                await self.node.hooks.vm_domain_devices(spec)
                dest_lh = self.service.hosts.libvirt_host(dest.uuid)
                if dest_lh.guest is None or dest_lh.conn is None:
                    raise HostErrors.exc("1001", f"host {dest.uuid} is not connected")
                xml = build_domain(spec, dest_lh.guest, listen="127.0.0.1" if dest_lh.uri.is_local else "0.0.0.0",
                                   cpu_mode=self.vms.cpu_mode()).to_xml()
                dest_conn = dest_lh.conn
                await self.service.hosts.run_on(source, lambda c: migrate_domain(c, dest_conn, uuid, xml),
                                                f"migrating VM {uuid} to host {dest.uuid}")
            except BaseException:
                await self.vms.change(uuid, "Running")
                raise
        except BaseException as exc:
            await self.atomic(unreserve_sync, dest.uuid, vm.cpu_num, vm.memory_size)
            error = exc.error if isinstance(exc, ZStackError) else VmErrors.error("1004", str(exc))
            await self.node.hooks.vm_failed_to_migrate(inv, dest.uuid, error)
            raise
        await self.atomic(move_sync, uuid, source, dest.uuid)
        await self.vms.change(uuid, "Running")
        await self.node.hooks.vm_after_migrate(await self.vms.inventory(uuid), source)

    async def evacuate(self, uuid: str, host_uuid: str, action: str) -> None:
        """Clear a VM off a host entering maintenance: migrate it, or stop it where migration
        is impossible (test driver, no other host) or the maintenance policy says ``stop``."""
        async def work() -> None:
            vm = await self.vms.get(uuid)
            if vm.host_uuid != host_uuid or vm.state not in ON_HOST:
                return
            if action == "migrate" and vm.state == "Running":
                try:
                    await self.migrate(uuid, None)
                    return
                except ZStackError as exc:
                    log.info("VM %s cannot migrate off host %s (%s); stopping it", uuid, host_uuid, exc.error)
            await self.vms.stop(uuid, graceful=True)

        await self.vms.queue(uuid, work)
