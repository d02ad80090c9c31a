"""A VM's devices after it was created: volumes and NICs other services attach and detach
(``VmAttachDiskMsg``... from storage and network), L3 networks users attach, and the console.

Devices of a stopped VM need nothing here: the next start defines the domain with whatever
``zstack_vm_domain_devices`` then reports. Devices of a running VM are hot-plugged (libvirt's
``attachDeviceFlags``), except on libvirt 9.0's test driver, which cannot: that is refused with
``VM.1005``.
"""

from __future__ import annotations

from typing import Any

from zstack_core import ZStackError, handles, invalid_argument
from zstack_core.header import DiskTO, NicTO, VmNicInventory
from zstack_core.header.messages import (
    AllocateVmNicMsg,
    ReleaseVmNicMsg,
    VmAttachDiskMsg,
    VmAttachNicMsg,
    VmDetachDiskMsg,
    VmDetachNicMsg,
)

from .api import (
    APIAttachL3NetworkToVmMsg,
    APIDetachL3NetworkFromVmMsg,
    APIGetVmConsoleAddressMsg,
    APIGetVmConsoleAddressReply,
    APIVmNicEvent,
)
from .domain import disk_from_to, interface_from_to
from .errors import VmErrors
from .hypervisor import find_device_xml, hot_plug, hot_unplug
from .models import VmInstanceVO
from .service import Part
from .vm import VmPart

__all__ = ["VmDevicePart"]


class VmDevicePart(Part):
    @property
    def vms(self) -> VmPart:
        return self.service.vms

    # -- console ------------------------------------------------------------------------------

    @handles(APIGetVmConsoleAddressMsg)
    async def console_address(self, msg: APIGetVmConsoleAddressMsg) -> APIGetVmConsoleAddressReply:
        vm = await self.vms.get(msg.uuid)
        self.vms.require(vm, ("Running", "Paused"), "a console address")
        assert vm.host_uuid is not None
        host = await self.service.hosts.inventory(vm.host_uuid)
        backends = [b for b in self.node.extension("console_backends") if b.hypervisor_type == host.hypervisor_type]
        if not backends:
            raise VmErrors.exc("1005", f"no console backend for hypervisor {host.hypervisor_type}")
        address = await backends[0].console_address(await self.vms.inventory(msg.uuid), host)
        return APIGetVmConsoleAddressReply(host_ip=address.hostname, port=address.port, protocol=address.protocol)

    # -- devices: volumes and NICs ------------------------------------------------------------

    async def _hot(self, uuid: str, fn: Any) -> Any:
        """Run ``fn(vm)`` under the VM's queue when the VM has a domain (hot-plug); otherwise at
        once: a stopped VM gets the device at its next start anyway, and not queueing lets
        storage and network detach devices while compute expunges the VM."""
        vm = await self.vms.get(uuid, "vmInstanceUuid")
        if vm.state not in ("Running", "Paused"):
            return await fn(vm)

        async def queued() -> Any:
            return await fn(await self.vms.get(uuid, "vmInstanceUuid"))

        return await self.vms.queue(uuid, queued)

    async def attach_device(self, vm: VmInstanceVO, xml: str, what: str) -> None:
        if vm.state in ("Running", "Paused") and vm.host_uuid is not None:
            self.vms.refuse_on_test_driver(vm.host_uuid, f"hot-plugging {what} into running VM {vm.uuid}")
            await self.service.hosts.run_on(vm.host_uuid, lambda c: hot_plug(c, vm.uuid, xml),
                                            f"hot-plugging {what} into VM {vm.uuid}")
        elif vm.state in ("Destroyed", "Expunging", "Destroying"):
            raise VmErrors.exc("1001", f"VM {vm.uuid} is {vm.state}; devices cannot be attached to it")

    async def detach_device(self, vm: VmInstanceVO, what: str, *, mac: str | None = None,
                            disk: DiskTO | None = None) -> None:
        if vm.state in ("Running", "Paused") and vm.host_uuid is not None:
            self.vms.refuse_on_test_driver(vm.host_uuid, f"unplugging {what} from running VM {vm.uuid}")
            host_uuid = vm.host_uuid

            def unplug(conn: Any) -> None:
                xml = find_device_xml(conn, vm.uuid, mac=mac, disk=disk)
                if xml is not None:
                    hot_unplug(conn, vm.uuid, xml)

            await self.service.hosts.run_on(host_uuid, unplug, f"unplugging {what} from VM {vm.uuid}")

    @handles(VmAttachDiskMsg)
    async def attach_disk(self, msg: VmAttachDiskMsg) -> None:
        async def work(vm: VmInstanceVO) -> None:
            inv = await self.vms.inventory(vm.uuid)
            await self.node.hooks.vm_before_attach_volume(inv, msg.volume)
            try:
                await self.attach_device(vm, disk_from_to(msg.disk).device_xml(), f"volume {msg.volume.uuid}")
            except ZStackError as exc:
                await self.node.hooks.vm_failed_to_attach_volume(inv, msg.volume, exc.error)
                raise
            await self.node.hooks.vm_after_attach_volume(await self.vms.inventory(vm.uuid), msg.volume)

        await self._hot(msg.vm_instance_uuid, work)

    @handles(VmDetachDiskMsg)
    async def detach_disk(self, msg: VmDetachDiskMsg) -> None:
        async def work(vm: VmInstanceVO) -> None:
            inv = await self.vms.inventory(vm.uuid)
            await self.node.hooks.vm_before_detach_volume(inv, msg.volume)
            await self.detach_device(vm, f"volume {msg.volume.uuid}", disk=msg.disk)
            await self.node.hooks.vm_after_detach_volume(await self.vms.inventory(vm.uuid), msg.volume)

        await self._hot(msg.vm_instance_uuid, work)

    async def _attach_nic(self, vm: VmInstanceVO, nic: VmNicInventory, nic_to: NicTO) -> None:
        inv = await self.vms.inventory(vm.uuid)
        await self.node.hooks.vm_before_attach_nic(inv, nic)
        await self.attach_device(vm, interface_from_to(nic_to).device_xml(), f"NIC {nic.uuid}")
        await self.node.hooks.vm_after_attach_nic(await self.vms.inventory(vm.uuid), nic)

    async def _detach_nic(self, vm: VmInstanceVO, nic: VmNicInventory) -> None:
        inv = await self.vms.inventory(vm.uuid)
        await self.node.hooks.vm_before_detach_nic(inv, nic)
        await self.detach_device(vm, f"NIC {nic.uuid}", mac=nic.mac)
        await self.node.hooks.vm_after_detach_nic(await self.vms.inventory(vm.uuid), nic)

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
        await self.vms.get(msg.vm_instance_uuid, "vmInstanceUuid")

        async def work() -> VmNicInventory:
            vm = await self.vms.get(msg.vm_instance_uuid, "vmInstanceUuid")
            self.vms.require(vm, ("Running", "Paused", "Stopped"), "attaching an L3 network")
            if vm.state != "Stopped":
                assert vm.host_uuid is not None
                self.vms.refuse_on_test_driver(vm.host_uuid, f"hot-plugging a NIC into running VM {vm.uuid}")
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

        nic = await self.vms.queue(msg.vm_instance_uuid, work)
        return APIVmNicEvent(inventory=await self.vms.inventory(msg.vm_instance_uuid), nic=nic)

    @handles(APIDetachL3NetworkFromVmMsg)
    async def detach_l3(self, msg: APIDetachL3NetworkFromVmMsg) -> APIVmNicEvent:
        self._network_required()
        found = await self.node.query.find("VmNic", [("uuid", "=", msg.vm_nic_uuid)])
        if not found:
            raise invalid_argument(f"no VM NIC {msg.vm_nic_uuid}", "$.vmNicUuid")
        nic = found[0]

        async def work() -> None:
            vm = await self.vms.get(nic.vm_instance_uuid, "vmNicUuid")
            await self._detach_nic(vm, nic)
            reply = await self.node.bus.call(ReleaseVmNicMsg(nic_uuid=nic.uuid))
            if reply.error is not None:
                raise ZStackError(reply.error)

        await self.vms.queue(nic.vm_instance_uuid, work)
        return APIVmNicEvent(inventory=await self.vms.inventory(nic.vm_instance_uuid), nic=nic)
