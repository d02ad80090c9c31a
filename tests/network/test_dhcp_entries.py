"""DHCP host entries change one NIC at a time (``dhcp.entries_fn``, ``update_dhcp_entries``).

* On a libvirt network of the real test driver: an entry is added and removed alone; adding one
  that is there already, or removing one that is gone, is no failure (a full reconcile got there
  first); a clash (the address held by another MAC) is a failure, so the service reconciles that
  host in full; a host without the network says so.
* Through the node (zstack-kvm + zstack-network, test driver): VM creates and expunges change
  exactly their own entry, with no full reconcile of the DHCP server on the way; a host whose
  DHCP network vanished behind the node's back is rebuilt in full, with every NIC, by the next
  change. About 5 s.
"""

from __future__ import annotations

import asyncio
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import pytest

from zstack_core.header import L2NetworkInventory
from zstack_network import dhcp
from zstack_network.dhcp import DhcpHost, DhcpSpec, entries_fn, reconcile_fn

from . import test_with_compute
from .test_with_compute import Cloud

cloud = test_with_compute.cloud  # the fixture, shared

L3 = "d" * 32


def _driver(tmp_path: Path) -> str:
    path = tmp_path / "dhcp-driver.xml"
    path.write_text(textwrap.dedent("""\
        <node><cpu><mhz>2000</mhz><model>i686</model><active>4</active><nodes>1</nodes>
        <sockets>1</sockets><cores>4</cores><threads>1</threads></cpu><memory>4194304</memory></node>"""))
    return f"test://{path}"


def _host(n: int) -> DhcpHost:
    ip = f"10.90.0.{n}"
    return DhcpHost(mac=f"fa:00:00:00:00:{n:02x}", ip=ip, name=dhcp.hostname_of(ip))


def _entries(conn: Any) -> set[DhcpHost]:
    xml = conn.networkLookupByName(dhcp.dhcp_network_name(L3)).XMLDesc(0)
    return {DhcpHost(mac=h.get("mac"), ip=h.get("ip"), name=h.get("name"))
            for h in ET.fromstring(xml).findall("ip/dhcp/host")}


def test_entries_change_one_at_a_time_on_a_test_driver_network(tmp_path: Path) -> None:
    conn = libvirt.open(_driver(tmp_path))
    try:
        assert entries_fn(L3, [_host(5)], [])(conn) == {"missing": 1, "added": 0, "removed": 0, "failed": 0}
        l2 = L2NetworkInventory(uuid="e" * 32, name="l2", zone_uuid="f" * 32, physical_interface="eth0")
        spec = DhcpSpec(l3_uuid=L3, l2=l2, gateway="10.90.0.1", netmask="255.255.255.0", hosts=(_host(2),))
        assert reconcile_fn(spec)(conn)["created"] == 1
        assert _entries(conn) == {_host(2)}

        assert entries_fn(L3, [_host(3), _host(4)], [])(conn) == {"missing": 0, "added": 2, "removed": 0, "failed": 0}
        assert _entries(conn) == {_host(2), _host(3), _host(4)}
        assert entries_fn(L3, [], [_host(2)])(conn) == {"missing": 0, "added": 0, "removed": 1, "failed": 0}
        assert _entries(conn) == {_host(3), _host(4)}

        # Already as wanted: nothing done, nothing failed.
        assert entries_fn(L3, [_host(3)], [_host(2)])(conn) == {"missing": 0, "added": 0, "removed": 0, "failed": 0}
        assert _entries(conn) == {_host(3), _host(4)}

        # A clash: .4 belongs to another MAC. Refused and reported, the entry there is kept.
        clash = DhcpHost(mac="fa:00:00:00:00:99", ip="10.90.0.4", name="10-90-0-4")
        assert entries_fn(L3, [clash], [])(conn)["failed"] == 1
        assert _entries(conn) == {_host(3), _host(4)}
        # The same IP moving to a new MAC in one batch: the old entry goes first.
        assert entries_fn(L3, [clash], [_host(4)])(conn) == {"missing": 0, "added": 1, "removed": 1, "failed": 0}
        assert _entries(conn) == {_host(3), clash}
    finally:
        conn.close()


async def test_creates_and_expunges_touch_only_their_entries(cloud: Cloud,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, l3 = await cloud.l3("10.91.0.0/24")
    first = await cloud.vm([l3.uuid])  # the host gets the DHCP server (a full reconcile)
    host = first.host_uuid
    reconciles: list[str] = []
    batches: list[tuple[int, int]] = []
    real_reconcile, real_entries = dhcp.reconcile_fn, dhcp.entries_fn

    def counting_reconcile(spec: Any) -> Any:
        reconciles.append(spec.l3_uuid)
        return real_reconcile(spec)

    def counting_entries(l3_uuid: str, add: Any, remove: Any) -> Any:
        batches.append((len(add), len(remove)))
        return real_entries(l3_uuid, add, remove)

    monkeypatch.setattr(dhcp, "reconcile_fn", counting_reconcile)
    monkeypatch.setattr(dhcp, "entries_fn", counting_entries)

    vms = await asyncio.gather(*(cloud.vm([l3.uuid]) for _ in range(6)))
    every = {(v.vm_nics[0].mac, v.vm_nics[0].ip) for v in [first, *vms]}
    assert await cloud.dhcp_hosts(host, l3.uuid) == every
    assert reconciles == []  # one entry per NIC, never the whole server
    assert sum(a for a, _ in batches) == 6 and all(r == 0 for _, r in batches)

    gone = vms[0]
    await cloud.call("DestroyVmInstance", uuid=gone.uuid)
    await cloud.call("ExpungeVmInstance", uuid=gone.uuid)
    every.discard((gone.vm_nics[0].mac, gone.vm_nics[0].ip))
    assert await cloud.dhcp_hosts(host, l3.uuid) == every
    assert reconciles == [] and batches[-1] == (0, 1)

    # The DHCP network vanishes behind the node's back: the next change rebuilds it in full.
    def drop(conn: Any) -> None:
        net = conn.networkLookupByName(dhcp.dhcp_network_name(l3.uuid))
        net.destroy()
        net.undefine()

    await cloud.on_host(host, drop)
    late = await cloud.vm([l3.uuid])
    every.add((late.vm_nics[0].mac, late.vm_nics[0].ip))
    assert reconciles == [l3.uuid]
    assert await cloud.dhcp_hosts(host, l3.uuid) == every
