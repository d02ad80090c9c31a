"""The seed's ``KVMConsoleHypervisorBackend``: where a VM's VNC/SPICE console listens, read from
the running domain's XML (libvirt picks the port when the VM starts)."""

from __future__ import annotations

from typing import Any

from zstack_core.header import ConsoleAddress, HostInventory, VmInstanceInventory
from zstack_core.header.backends import ConsoleBackend

from .domain import Domain
from .errors import VmErrors
from .hypervisor import lookup
from .service import compute_of

__all__ = ["KVMConsoleHypervisorBackend"]


class KVMConsoleHypervisorBackend(ConsoleBackend):
    hypervisor_type = "KVM"

    def __init__(self, node: Any = None) -> None:
        self._node = node

    async def console_address(self, vm: VmInstanceInventory, host: HostInventory) -> ConsoleAddress:
        hosts = compute_of(self._node).hosts

        def read(conn: Any) -> str | None:
            dom = lookup(conn, vm.uuid)
            return None if dom is None else dom.XMLDesc(0)

        xml = await hosts.run_on(host.uuid, read, f"reading the domain of VM {vm.uuid}")
        if xml is None:
            raise VmErrors.exc("1001", f"VM {vm.uuid} has no domain on host {host.uuid}")
        for g in Domain.from_xml(xml).graphics:
            if g.type in ("vnc", "spice") and g.port > 0:
                listen = g.listen
                if not listen or listen in ("0.0.0.0", "::"):
                    listen = hosts.libvirt_host(host.uuid).uri.address
                return ConsoleAddress(protocol=g.type, hostname=listen, port=g.port)
        raise VmErrors.exc("1005", f"VM {vm.uuid} has no VNC or SPICE console with a port on host {host.uuid} "
                                   f"(libvirt's test driver assigns none)")
