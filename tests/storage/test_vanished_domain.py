"""Finding the running domain that uses a volume skips domains destroyed meanwhile.

``resize_volume`` lists a host's running domains, then reads each one's XML. Another client of
the same libvirtd (another program, a benchmark) destroying a domain in between made the
resize fail with "Domain not found" (seen in a full test run beside the kvm benchmark).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import libvirt

from zstack_storage.local_storage import _running_domain_using


def test_a_domain_destroyed_between_listing_and_reading_is_skipped() -> None:
    conn = libvirt.open("test:///default")
    names = [f"zs-vanish-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    disk = "/var/lib/zstack-test/vanish/root.qcow2"
    try:
        for name, with_disk in zip(names, (False, True)):
            devices = (f"<devices><disk type='file' device='disk'><source file='{disk}'/>"
                       "<target dev='vda' bus='virtio'/></disk></devices>") if with_disk else ""
            conn.createXML(f"<domain type='test'><name>{name}</name><memory>65536</memory>"
                           f"<os><type>hvm</type></os>{devices}</domain>", 0)

        class GoneMeanwhile:
            """The real connection; the first domain is destroyed right after the listing."""

            def listAllDomains(self, flags: int = 0) -> list[Any]:  # noqa: N802 - libvirt's name
                domains = conn.listAllDomains(flags)
                conn.lookupByName(names[0]).destroy()
                return sorted(domains, key=lambda d: d.name() != names[0])  # the vanished one first

        found = _running_domain_using(GoneMeanwhile(), disk)  # type: ignore[arg-type]
        assert found is not None and found.name() == names[1]
    finally:
        for name in names:
            try:
                conn.lookupByName(name).destroy()
            except libvirt.libvirtError:
                pass
        conn.close()


def test_no_domain_uses_the_volume(tmp_path: Path) -> None:
    conn = libvirt.open("test:///default")
    try:
        assert _running_domain_using(conn, str(tmp_path / "nothing.qcow2")) is None
    finally:
        conn.close()
