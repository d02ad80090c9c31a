"""libvirt domain XML as typed objects that build the XML and parse libvirt's XML back.

Only what compute needs is modelled: the machine (type, memory, CPUs, OS, features), disks,
network interfaces, graphics and a serial console. Parsing ignores every element it does not
model (addresses, aliases, controllers libvirt adds), so ``Domain.from_xml(dom.XMLDesc())`` works
on what a running libvirt returns, and ``Domain.from_xml(d.to_xml()) == d`` for every domain built
here (a property test checks it).

Disks and interfaces are never invented here: storage and network describe them as
:class:`~zstack_core.header.DiskTO`/:class:`~zstack_core.header.NicTO` through the
``zstack_vm_domain_devices`` hook, and :func:`disk_from_to`/:func:`interface_from_to` turn those
into XML objects.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import attrs

from zstack_core.header import DiskTO, NicTO

__all__ = [
    "Disk",
    "Domain",
    "DomainXmlError",
    "Graphics",
    "Interface",
    "OperatingSystem",
    "disk_from_to",
    "disk_target",
    "domain_name",
    "domain_uuid",
    "interface_from_to",
]

_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
        "mb": 1000 * 1000 / 1024, "g": 1 << 20, "gib": 1 << 20, "gb": 1000 ** 3 / 1024,
        "t": 1 << 30, "tib": 1 << 30, "tb": 1000 ** 4 / 1024}


class DomainXmlError(ValueError):
    """The XML is not a domain this module can read."""


def domain_name(vm_uuid: str) -> str:
    """The libvirt name of a VM's domain: recognizable as ours on a shared libvirtd."""
    return f"zstack-{vm_uuid}"


def domain_uuid(vm_uuid: str) -> str:
    """The VM's UUID as libvirt writes UUIDs (8-4-4-4-12)."""
    u = vm_uuid.replace("-", "").lower()
    return f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"


_BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd", "ide": "hd"}


def disk_target(bus: str, device_id: int) -> str:
    """``vda``, ``vdb``... for virtio; ``sda`` for scsi/sata; ``hda`` for ide."""
    prefix = _BUS_PREFIX.get(bus, "vd")
    letters = ""
    n = device_id
    while True:
        letters = chr(ord("a") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return prefix + letters


@attrs.frozen(kw_only=True)
class Disk:
    """A ``<disk>``: a file, a block device or a volume of a storage pool."""

    target_dev: str
    device: str = "disk"
    """``disk`` or ``cdrom``."""
    type: str = "file"
    """``file``, ``block`` or ``volume``."""
    source: str | None = None
    """The file path, the block device, or the volume name (with ``pool``)."""
    pool: str | None = None
    driver_type: str = "qcow2"
    target_bus: str = "virtio"
    readonly: bool = False
    serial: str | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("disk", type=self.type, device=self.device)
        ET.SubElement(el, "driver", name="qemu", type=self.driver_type)
        if self.source is not None:
            if self.type == "file":
                ET.SubElement(el, "source", file=self.source)
            elif self.type == "block":
                ET.SubElement(el, "source", dev=self.source)
            else:
                ET.SubElement(el, "source", pool=self.pool or "", volume=self.source)
        ET.SubElement(el, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            ET.SubElement(el, "readonly")
        if self.serial is not None:
            _text(el, "serial", self.serial)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Disk:
        dtype = el.get("type", "file")
        source_el = el.find("source")
        source = pool = None
        if source_el is not None:
            if dtype == "file":
                source = source_el.get("file")
            elif dtype == "block":
                source = source_el.get("dev")
            elif dtype == "volume":
                source, pool = source_el.get("volume"), source_el.get("pool")
        target = el.find("target")
        if target is None or not target.get("dev"):
            raise DomainXmlError("a <disk> has no <target dev=...>")
        driver = el.find("driver")
        return cls(target_dev=target.get("dev", ""), device=el.get("device", "disk"), type=dtype, source=source,
                   pool=pool, driver_type=driver.get("type", "raw") if driver is not None else "raw",
                   target_bus=target.get("bus", "virtio"), readonly=el.find("readonly") is not None,
                   serial=_child_text(el, "serial"))

    def device_xml(self) -> str:
        return ET.tostring(self.to_element(), encoding="unicode")


@attrs.frozen(kw_only=True)
class Interface:
    """An ``<interface>`` on a Linux bridge or a libvirt network."""

    mac: str
    source: str
    type: str = "bridge"
    """``bridge`` or ``network``."""
    model: str = "virtio"
    target_dev: str | None = None
    filter: str | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("interface", type=self.type)
        ET.SubElement(el, "mac", address=self.mac)
        ET.SubElement(el, "source").set("bridge" if self.type == "bridge" else "network", self.source)
        if self.target_dev is not None:
            ET.SubElement(el, "target", dev=self.target_dev)
        ET.SubElement(el, "model", type=self.model)
        if self.filter is not None:
            ET.SubElement(el, "filterref", filter=self.filter)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Interface:
        itype = el.get("type", "bridge")
        mac_el, source_el = el.find("mac"), el.find("source")
        if mac_el is None or not mac_el.get("address"):
            raise DomainXmlError("an <interface> has no <mac address=...>")
        source = ""
        if source_el is not None:
            source = source_el.get("bridge") or source_el.get("network") or source_el.get("dev") or ""
        target, model, filterref = el.find("target"), el.find("model"), el.find("filterref")
        return cls(mac=mac_el.get("address", "").lower(), source=source, type=itype,
                   model=model.get("type", "virtio") if model is not None else "virtio",
                   target_dev=target.get("dev") if target is not None else None,
                   filter=filterref.get("filter") if filterref is not None else None)

    def device_xml(self) -> str:
        return ET.tostring(self.to_element(), encoding="unicode")


@attrs.frozen(kw_only=True)
class Graphics:
    """A VNC or SPICE display; ``port`` -1 with ``autoport`` lets libvirt choose."""

    type: str = "vnc"
    port: int = -1
    autoport: bool = True
    listen: str | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("graphics", type=self.type, port=str(self.port), autoport="yes" if self.autoport else "no")
        if self.listen is not None:
            el.set("listen", self.listen)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Graphics:
        listen = el.get("listen")
        if listen is None:
            child = el.find("listen")
            if child is not None:
                listen = child.get("address")
        try:
            port = int(el.get("port", "-1"))
        except ValueError as exc:
            raise DomainXmlError(f"graphics port is not a number: {el.get('port')!r}") from exc
        return cls(type=el.get("type", "vnc"), port=port, autoport=el.get("autoport", "no") == "yes", listen=listen)


@attrs.frozen(kw_only=True)
class OperatingSystem:
    """``<os>``: the guest's machine type and boot order."""

    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    boot: tuple[str, ...] = ("hd",)

    def to_element(self) -> ET.Element:
        el = ET.Element("os")
        attrs_: dict[str, str] = {}
        if self.arch is not None:
            attrs_["arch"] = self.arch
        if self.machine is not None:
            attrs_["machine"] = self.machine
        _text(el, "type", self.type, **attrs_)
        for dev in self.boot:
            ET.SubElement(el, "boot", dev=dev)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> OperatingSystem:
        t = el.find("type")
        return cls(type=(t.text or "hvm").strip() if t is not None else "hvm",
                   arch=t.get("arch") if t is not None else None,
                   machine=t.get("machine") if t is not None else None,
                   boot=tuple(b.get("dev", "") for b in el.findall("boot")))


@attrs.frozen(kw_only=True)
class Domain:
    """A whole ``<domain>``."""

    name: str
    uuid: str
    memory_kib: int
    vcpu: int = 1
    type: str = "kvm"
    """``kvm`` (hardware), ``qemu`` (TCG) or ``test`` (libvirt's test driver)."""
    title: str | None = None
    description: str | None = None
    os: OperatingSystem = attrs.field(factory=OperatingSystem)
    features: tuple[str, ...] = ("acpi", "apic")
    cpu_mode: str | None = None
    """``host-passthrough``/``host-model``, or None for the hypervisor's default."""
    clock_offset: str = "utc"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    graphics: tuple[Graphics, ...] = ()
    serial_console: bool = False
    """A pty serial port with a console on it."""

    def to_element(self) -> ET.Element:
        root = ET.Element("domain", type=self.type)
        _text(root, "name", self.name)
        _text(root, "uuid", self.uuid)
        if self.title is not None:
            _text(root, "title", self.title)
        if self.description is not None:
            _text(root, "description", self.description)
        _text(root, "memory", str(self.memory_kib), unit="KiB")
        _text(root, "currentMemory", str(self.memory_kib), unit="KiB")
        _text(root, "vcpu", str(self.vcpu))
        root.append(self.os.to_element())
        if self.features:
            feats = ET.SubElement(root, "features")
            for f in self.features:
                ET.SubElement(feats, f)
        if self.cpu_mode is not None:
            ET.SubElement(root, "cpu", mode=self.cpu_mode)
        ET.SubElement(root, "clock", offset=self.clock_offset)
        _text(root, "on_poweroff", self.on_poweroff)
        _text(root, "on_reboot", self.on_reboot)
        _text(root, "on_crash", self.on_crash)
        devices = ET.SubElement(root, "devices")
        if self.emulator is not None:
            _text(devices, "emulator", self.emulator)
        for disk in self.disks:
            devices.append(disk.to_element())
        for iface in self.interfaces:
            devices.append(iface.to_element())
        for g in self.graphics:
            devices.append(g.to_element())
        if self.serial_console:
            serial = ET.SubElement(devices, "serial", type="pty")
            ET.SubElement(serial, "target", port="0")
            console = ET.SubElement(devices, "console", type="pty")
            ET.SubElement(console, "target", type="serial", port="0")
        return root

    def to_xml(self) -> str:
        root = self.to_element()
        ET.indent(root)
        return ET.tostring(root, encoding="unicode")

    @classmethod
    def from_xml(cls, xml: str) -> Domain:
        """Parse a domain's XML, including what libvirt's ``XMLDesc`` returns."""
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise DomainXmlError(f"not XML: {exc}") from exc
        if root.tag != "domain":
            raise DomainXmlError(f"expected <domain>, got <{root.tag}>")
        name, uuid = _child_text(root, "name"), _child_text(root, "uuid")
        if not name or not uuid:
            raise DomainXmlError("a domain needs <name> and <uuid>")
        memory = root.find("memory")
        if memory is None or not (memory.text or "").strip():
            raise DomainXmlError("a domain needs <memory>")
        os_el = root.find("os")
        features_el = root.find("features")
        cpu_el, clock_el = root.find("cpu"), root.find("clock")
        devices = root.find("devices")
        devs: list[ET.Element] = list(devices) if devices is not None else []
        has_serial = any(d.tag == "serial" for d in devs) and any(d.tag == "console" for d in devs)
        vcpu_text = _child_text(root, "vcpu") or "1"
        return cls(
            name=name, uuid=uuid, type=root.get("type", "kvm"),
            title=_child_text(root, "title"), description=_child_text(root, "description"),
            memory_kib=_to_kib(memory), vcpu=int(vcpu_text),
            os=OperatingSystem.from_element(os_el) if os_el is not None else OperatingSystem(boot=()),
            features=tuple(f.tag for f in features_el) if features_el is not None else (),
            cpu_mode=cpu_el.get("mode") if cpu_el is not None else None,
            clock_offset=clock_el.get("offset", "utc") if clock_el is not None else "utc",
            on_poweroff=_child_text(root, "on_poweroff") or "destroy",
            on_reboot=_child_text(root, "on_reboot") or "restart",
            on_crash=_child_text(root, "on_crash") or "destroy",
            emulator=_child_text(devices, "emulator") if devices is not None else None,
            disks=tuple(Disk.from_element(d) for d in devs if d.tag == "disk"),
            interfaces=tuple(Interface.from_element(d) for d in devs if d.tag == "interface"),
            graphics=tuple(Graphics.from_element(d) for d in devs if d.tag == "graphics"),
            serial_console=has_serial,
        )


def disk_from_to(to: DiskTO) -> Disk:
    """The ``<disk>`` for a storage plugin's :class:`DiskTO`."""
    return Disk(target_dev=disk_target(to.bus, to.device_id), device=to.device, type=to.source_type,
                source=to.path, pool=to.pool, driver_type=to.format, target_bus=to.bus,
                readonly=to.read_only or to.device == "cdrom", serial=to.volume_uuid)


def interface_from_to(to: NicTO) -> Interface:
    """The ``<interface>`` for a network plugin's :class:`NicTO`."""
    if to.bridge:
        itype, source = "bridge", to.bridge
    elif to.network:
        itype, source = "network", to.network
    else:
        raise DomainXmlError(f"NIC {to.nic_uuid} names neither a bridge nor a libvirt network")
    return Interface(mac=to.mac.lower(), source=source, type=itype, model=to.model,
                     target_dev=f"vnic{to.nic_uuid[:8]}.{to.device_id}"[:15], filter=to.filter_name)


def _text(parent: ET.Element, tag: str, text: str, **attrib: Any) -> ET.Element:
    el = ET.SubElement(parent, tag, **attrib)
    el.text = text
    return el


def _child_text(parent: ET.Element, tag: str) -> str | None:
    el = parent.find(tag)
    if el is None:
        return None
    return el.text or ""


def _to_kib(el: ET.Element) -> int:
    unit = el.get("unit", "KiB").lower()
    factor = _KIB.get(unit)
    if factor is None:
        raise DomainXmlError(f"unknown memory unit {el.get('unit')!r}")
    return int(int((el.text or "0").strip()) * factor)
