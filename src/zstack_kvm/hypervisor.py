"""What compute does to a VM's domain on its host: build its XML, define and start it, power
it off (gracefully, then forcibly), pause, resume, hot-plug devices and migrate.

Each function here is a plain function of a ``virConnect``, run in the host's worker thread
(see :class:`~zstack_kvm.libvirt_host.LibvirtHost`); the async wrappers in :mod:`.vm` decide when.
A VM's domain is named ``zstack-<vm uuid>`` and carries the VM's UUID, so it is found by UUID.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import attrs
import libvirt  # type: ignore[import-untyped]

from zstack_core.header import DiskTO, NicTO, VmInstanceSpec

from .domain import (
    Domain,
    Graphics,
    OperatingSystem,
    disk_from_to,
    disk_target,
    domain_name,
    domain_uuid,
    interface_from_to,
)

__all__ = [
    "GuestFacts",
    "build_domain",
    "define_and_start",
    "destroy_domain",
    "domain_state",
    "find_device_xml",
    "guest_facts",
    "hot_plug",
    "hot_unplug",
    "list_domain_states",
    "lookup",
    "migrate_domain",
    "pause",
    "request_shutdown",
    "resume",
]

# libvirt domain states -> the VM state they mean.
STATE_OF_DOMAIN = {
    libvirt.VIR_DOMAIN_RUNNING: "Running",
    libvirt.VIR_DOMAIN_BLOCKED: "Running",
    libvirt.VIR_DOMAIN_SHUTDOWN: "Running",  # shutting down, not yet off
    libvirt.VIR_DOMAIN_PAUSED: "Paused",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "Paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "Stopped",
    libvirt.VIR_DOMAIN_CRASHED: "Stopped",
}


@attrs.frozen(kw_only=True)
class GuestFacts:
    """How guests are defined on a host, read from its capabilities: ``kvm`` when the host
    offers hardware virtualization, else ``qemu`` (TCG); ``test`` on the test driver."""

    domain_type: str
    arch: str
    machine: str | None
    emulator: str | None
    is_test: bool


def guest_facts(conn: libvirt.virConnect) -> GuestFacts:
    caps = ET.fromstring(conn.getCapabilities())
    host_arch = caps.findtext("./host/cpu/arch") or "x86_64"
    guests = [g for g in caps.findall("guest") if g.findtext("os_type") == "hvm"]
    if not guests:
        raise libvirt.libvirtError("the host offers no hvm guests")
    archs = [a for a in (g.find("arch") for g in guests) if a is not None]
    if not archs:
        raise libvirt.libvirtError("the host's hvm guests name no architecture")
    arch_el = next((a for a in archs if a.get("name") == host_arch), archs[0])
    types = [d.get("type", "") for d in arch_el.findall("domain")]
    if "test" in types:
        return GuestFacts(domain_type="test", arch=arch_el.get("name", host_arch), machine=None, emulator=None,
                          is_test=True)
    domain_type = "kvm" if "kvm" in types else "qemu"
    machines = [m for m in arch_el.findall("machine")]
    machine = "pc" if any(m.text == "pc" for m in machines) else (machines[0].text if machines else None)
    return GuestFacts(domain_type=domain_type, arch=arch_el.get("name", host_arch), machine=machine,
                      emulator=arch_el.findtext("emulator"), is_test=False)


def _dedupe_disks(disks: list[DiskTO]) -> list[DiskTO]:
    seen: set[str] = set()
    out = []
    for d in disks:
        if d.volume_uuid not in seen:
            seen.add(d.volume_uuid)
            out.append(d)
    return sorted(out, key=lambda d: (d.device_id, d.volume_uuid))


def _dedupe_nics(nics: list[NicTO]) -> list[NicTO]:
    seen: set[str] = set()
    out = []
    for n in nics:
        if n.nic_uuid not in seen:
            seen.add(n.nic_uuid)
            out.append(n)
    return sorted(out, key=lambda n: (n.device_id, n.nic_uuid))


def build_domain(spec: VmInstanceSpec, guest: GuestFacts, *, listen: str, boot: tuple[str, ...] = ("hd",),
                 cpu_mode: str | None = None) -> Domain:
    """The domain of ``spec.vm``: its size from the VM, its devices from ``spec.disks`` and
    ``spec.nic_tos`` (filled by the ``zstack_vm_domain_devices`` hook), a VNC display and, on
    QEMU, a serial console."""
    vm = spec.vm
    title = " ".join(vm.name.split())[:200]
    return Domain(
        name=domain_name(vm.uuid), uuid=domain_uuid(vm.uuid), type=guest.domain_type, title=title or None,
        memory_kib=vm.memory_size // 1024, vcpu=vm.cpu_num,
        os=OperatingSystem(arch=guest.arch, machine=guest.machine, boot=boot),
        features=() if guest.is_test else ("acpi", "apic"),
        cpu_mode=cpu_mode if guest.domain_type == "kvm" else None,
        emulator=guest.emulator,
        disks=tuple(disk_from_to(d) for d in _dedupe_disks(spec.disks)),
        interfaces=tuple(interface_from_to(n) for n in _dedupe_nics(spec.nic_tos)),
        graphics=(Graphics(type="vnc", listen=listen),),
        serial_console=not guest.is_test,
    )


def lookup(conn: libvirt.virConnect, vm_uuid: str) -> libvirt.virDomain | None:
    """The VM's domain on this host, or None."""
    try:
        return conn.lookupByUUIDString(domain_uuid(vm_uuid))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def domain_state(conn: libvirt.virConnect, vm_uuid: str) -> str | None:
    """``Running``/``Paused``/``Stopped`` as libvirt sees the VM, or None when it has no domain."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return None
    return STATE_OF_DOMAIN.get(dom.state()[0], "Unknown")


def list_domain_states(conn: libvirt.virConnect) -> dict[str, str]:
    """VM uuid (dashes removed) -> state, for every domain named like ours."""
    out: dict[str, str] = {}
    for dom in conn.listAllDomains():
        if dom.name().startswith("zstack-"):
            try:
                state = dom.state()[0]
            except libvirt.libvirtError as exc:
                # Gone since it was listed (destroyed meanwhile): it is simply not there.
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue
                raise
            out[dom.UUIDString().replace("-", "")] = STATE_OF_DOMAIN.get(state, "Unknown")
    return out


def define_and_start(conn: libvirt.virConnect, xml: str, start: bool = True) -> None:
    """Define the domain (replacing an old definition) and start it; a domain that fails to
    start is undefined again so nothing is left behind."""
    dom = conn.defineXML(xml)
    if not start:
        return
    try:
        dom.create()
    except libvirt.libvirtError:
        try:
            dom.undefine()
        except libvirt.libvirtError:
            pass
        raise


def destroy_domain(conn: libvirt.virConnect, vm_uuid: str) -> bool:
    """Power the VM off at once and remove its definition. False when there was none."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return False
    persistent = dom.isPersistent()  # asked first: a transient domain is gone once destroyed
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # already off
                raise
    if persistent:
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except libvirt.libvirtError:
            dom.undefine()  # drivers without those flags (the test driver)
    return True


def request_shutdown(conn: libvirt.virConnect, vm_uuid: str) -> None:
    """Ask the guest to power off (ACPI); it may ignore the request."""
    dom = lookup(conn, vm_uuid)
    if dom is not None and dom.isActive():
        dom.shutdown()


def pause(conn: libvirt.virConnect, vm_uuid: str) -> None:
    dom = lookup(conn, vm_uuid)
    if dom is None:
        raise libvirt.libvirtError(f"the VM {vm_uuid} has no domain on this host")
    dom.suspend()


def resume(conn: libvirt.virConnect, vm_uuid: str) -> None:
    dom = lookup(conn, vm_uuid)
    if dom is None:
        raise libvirt.libvirtError(f"the VM {vm_uuid} has no domain on this host")
    dom.resume()


_LIVE_AND_CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG


def hot_plug(conn: libvirt.virConnect, vm_uuid: str, device_xml: str) -> None:
    dom = lookup(conn, vm_uuid)
    if dom is None:
        raise libvirt.libvirtError(f"the VM {vm_uuid} has no domain on this host")
    dom.attachDeviceFlags(device_xml, _LIVE_AND_CONFIG)


def find_device_xml(conn: libvirt.virConnect, vm_uuid: str, *, mac: str | None = None,
                    disk: DiskTO | None = None) -> str | None:
    """The XML of the running domain's NIC with ``mac`` or disk of ``disk`` (by serial, then
    by target), or None when the domain does not have it."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return None
    root = ET.fromstring(dom.XMLDesc(0))
    devices = root.find("devices")
    if devices is None:
        return None
    for el in devices:
        if mac is not None and el.tag == "interface":
            m = el.find("mac")
            if m is not None and (m.get("address") or "").lower() == mac.lower():
                return ET.tostring(el, encoding="unicode")
        if disk is not None and el.tag == "disk":
            target = el.find("target")
            if el.findtext("serial") == disk.volume_uuid or (
                    target is not None and target.get("dev") == disk_target(disk.bus, disk.device_id)):
                return ET.tostring(el, encoding="unicode")
    return None


def hot_unplug(conn: libvirt.virConnect, vm_uuid: str, device_xml: str) -> None:
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return
    dom.detachDeviceFlags(device_xml, _LIVE_AND_CONFIG)


def migrate_domain(conn: libvirt.virConnect, dest_conn: libvirt.virConnect, vm_uuid: str, dest_xml: str) -> None:
    """Live-migrate the VM to ``dest_conn``'s host, defining it there with ``dest_xml`` and
    undefining it here (``virDomainMigrate3``)."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        raise libvirt.libvirtError(f"the VM {vm_uuid} has no domain on the source host")
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml}
    dom.migrate3(dest_conn, params, flags)
