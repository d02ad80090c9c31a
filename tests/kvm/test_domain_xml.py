"""Domain XML: typed objects build libvirt XML and parse it back, including the XML libvirt
itself returns for a domain it defined."""

from __future__ import annotations

import attrs
import libvirt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstack_core.header import DiskTO, NicTO
from zstack_kvm.domain import (
    Disk,
    Domain,
    DomainXmlError,
    Graphics,
    Interface,
    OperatingSystem,
    disk_from_to,
    disk_target,
    domain_uuid,
    interface_from_to,
)

text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E) | st.sampled_from("äöü漢 "),
               min_size=1, max_size=24).map(str.strip).filter(bool)
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True)
macs = st.lists(st.integers(0, 255), min_size=5, max_size=5).map(
    lambda b: "52:" + ":".join(f"{x:02x}" for x in b))
uuids = st.uuids().map(str)

disks = st.builds(
    Disk,
    target_dev=st.sampled_from(["vda", "vdb", "vdz", "sda", "hdc"]),
    device=st.sampled_from(["disk", "cdrom"]),
    type=st.sampled_from(["file", "block", "volume"]),
    source=st.none() | names.map(lambda n: "/var/lib/zstack/" + n),
    pool=st.none(),
    driver_type=st.sampled_from(["qcow2", "raw"]),
    target_bus=st.sampled_from(["virtio", "scsi", "ide", "sata"]),
    readonly=st.booleans(),
    serial=st.none() | st.from_regex(r"[a-f0-9]{32}", fullmatch=True),
).map(lambda d: d if d.type != "volume" or d.source is None else attrs.evolve(d, pool="pool0"))

interfaces = st.builds(Interface, mac=macs, source=names, type=st.sampled_from(["bridge", "network"]),
                       model=st.sampled_from(["virtio", "e1000", "rtl8139"]),
                       target_dev=st.none() | names, filter=st.none() | names)
graphics = st.builds(Graphics, type=st.sampled_from(["vnc", "spice"]), port=st.integers(-1, 65535),
                     autoport=st.booleans(), listen=st.none() | st.sampled_from(["127.0.0.1", "0.0.0.0", "::"]))
systems = st.builds(OperatingSystem, type=st.just("hvm"), arch=st.none() | st.sampled_from(["x86_64", "i686"]),
                    machine=st.none() | st.sampled_from(["pc", "q35", "pc-i440fx-7.2"]),
                    boot=st.lists(st.sampled_from(["hd", "cdrom", "network"]), max_size=3, unique=True).map(tuple))
domains = st.builds(
    Domain, name=names, uuid=uuids, memory_kib=st.integers(1024, 1 << 30), vcpu=st.integers(1, 256),
    type=st.sampled_from(["kvm", "qemu", "test"]), title=st.none() | text, description=st.none() | text,
    os=systems, features=st.lists(st.sampled_from(["acpi", "apic", "pae"]), unique=True, max_size=3).map(tuple),
    cpu_mode=st.none() | st.sampled_from(["host-passthrough", "host-model"]),
    clock_offset=st.sampled_from(["utc", "localtime"]),
    on_poweroff=st.sampled_from(["destroy", "restart"]), on_reboot=st.sampled_from(["restart", "destroy"]),
    on_crash=st.sampled_from(["destroy", "restart", "preserve"]),
    emulator=st.none() | st.just("/usr/bin/qemu-system-x86_64"),
    disks=st.lists(disks, max_size=4).map(tuple), interfaces=st.lists(interfaces, max_size=4).map(tuple),
    graphics=st.lists(graphics, max_size=2).map(tuple), serial_console=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(domains)
def test_domain_xml_round_trip(domain: Domain) -> None:
    assert Domain.from_xml(domain.to_xml()) == domain


def test_libvirt_reads_our_xml_and_we_read_libvirts() -> None:
    """What libvirt makes of our XML (with addresses, aliases and defaults added) parses back
    to the domain we wrote."""
    ours = Domain(name="zstack-roundtrip", uuid=domain_uuid("12" * 16), type="test", title="round trip",
                  memory_kib=65536, vcpu=2, os=OperatingSystem(arch="i686", boot=("hd", "cdrom")),
                  disks=(disk_from_to(DiskTO(volume_uuid="ab" * 16, path="/var/lib/zstack/root.qcow2")),),
                  interfaces=(interface_from_to(NicTO(nic_uuid="cd" * 16, mac="52:54:00:aa:bb:cc", network="default")),),
                  graphics=(Graphics(type="vnc", port=5901, autoport=False, listen="127.0.0.1"),))
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(ours.to_xml())
        try:
            theirs = Domain.from_xml(dom.XMLDesc(0))
        finally:
            dom.undefine()
        test_dom = Domain.from_xml(conn.lookupByName("test").XMLDesc(0))
    finally:
        conn.close()
    assert theirs == ours
    assert (test_dom.memory_kib, test_dom.vcpu, test_dom.interfaces[0].mac) == (8 * 1024 * 1024, 2, "aa:bb:cc:dd:ee:ff")


def test_memory_units_and_bad_xml() -> None:
    xml = "<domain type='kvm'><name>a</name><uuid>{}</uuid><memory unit='MiB'>64</memory></domain>"
    assert Domain.from_xml(xml.format(domain_uuid("0" * 32))).memory_kib == 65536
    assert Domain.from_xml(xml.replace("MiB", "GiB").format("u")).memory_kib == 64 << 20
    for bad in ("not xml", "<network/>", "<domain><name>a</name></domain>",
                "<domain><name>a</name><uuid>u</uuid><memory unit='parsecs'>1</memory></domain>",
                "<domain><name>a</name><uuid>u</uuid><memory>1</memory><devices><disk/></devices></domain>"):
        with pytest.raises(DomainXmlError):
            Domain.from_xml(bad)


def test_disk_targets() -> None:
    assert [disk_target("virtio", i) for i in (0, 1, 25, 26, 27)] == ["vda", "vdb", "vdz", "vdaa", "vdab"]
    assert disk_target("scsi", 2) == "sdc" and disk_target("ide", 0) == "hda"
    with pytest.raises(DomainXmlError):
        interface_from_to(NicTO(nic_uuid="x", mac="52:54:00:00:00:01"))
