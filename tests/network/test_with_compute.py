"""zstack-network with zstack-kvm in one node, on libvirt's test driver (each host a private
test-driver instance, so what one host holds is its own).

What is real here: the node, both installed plugins talking only through zstack_core's
contracts, SQLite, and libvirt's test driver holding the networks and domains each host was
given. What is not: the test driver makes no kernel bridges and runs no dnsmasq (see
test_e2e_libvirtd.py for that).
"""

from __future__ import annotations

import textwrap
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import Flow, FlowContribution, ManagementNode, ZStackError, hookimpl
from zstack_core.header import VmCreateFlows
from zstack_core.header.messages import HostRunMsg
from zstack_network.models import DhcpNetworkHostRefVO, L2NetworkHostRefVO, UsedIpVO, VmNicVO

from .test_l2_l3_api import refused, snapshot


class FailAt:
    """A plugin whose flow fails the VM create after network allocated (when armed)."""

    def __init__(self) -> None:
        self.armed = False

    @hookimpl
    def zstack_flows(self) -> list[FlowContribution]:
        plugin = self

        class Boom(Flow):
            name = "test-boom"

            async def run(self, data: dict[str, Any]) -> None:
                if plugin.armed:
                    raise ZStackError(plugin_error("the test made this create fail"))

        return [FlowContribution(chain=VmCreateFlows.CHAIN, flow=Boom(), order=VmCreateFlows.INSTANTIATE_PRE + 1)]


class RealizeRecorder:
    """A third-party plugin told about every L2 realization (``zstack_l2_realize_on_host``); it
    refuses networks named ``refuse-me``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @hookimpl
    async def zstack_l2_realize_on_host(self, l2: Any, host: Any) -> None:
        if l2.name == "refuse-me":
            raise ZStackError(plugin_error(f"the test plugin refuses {l2.name} on {host.name}"))
        self.calls.append((l2.uuid, host.uuid))


def plugin_error(text: str) -> Any:
    from zstack_core.errors import operr

    return operr(text)


@attrs.define
class Cloud:
    node: ManagementNode
    zone: Any
    cluster: Any
    hosts: list[Any]
    driver: Callable[[], str]
    fail: FailAt
    recorder: RealizeRecorder

    async def call(self, api: str, /, **params: Any) -> Any:
        return await self.node.api_call(api, params)

    async def on_host(self, host_uuid: str, fn: Callable[[Any], Any]) -> Any:
        return (await self.node.bus.call_ok(HostRunMsg(host_uuid=host_uuid, fn=fn))).result

    async def networks(self, host_uuid: str) -> dict[str, str]:
        """Libvirt network name -> XML on the host."""
        return await self.on_host(host_uuid, lambda c: {n.name(): n.XMLDesc() for n in c.listAllNetworks()})

    async def interfaces(self, host_uuid: str, vm_uuid: str) -> list[tuple[str, str]]:
        """(MAC, bridge) of each interface of the VM's domain on the host."""
        def read(conn: Any) -> str:
            # As in ZStack, the domain's libvirt UUID is the VM's.
            return conn.lookupByUUIDString(str(uuid.UUID(vm_uuid))).XMLDesc()

        root = ET.fromstring(await self.on_host(host_uuid, read))
        return [(i.find("mac").get("address"), i.find("source").get("bridge"))  # type: ignore[union-attr]
                for i in root.findall("devices/interface")]

    async def dhcp_hosts(self, host_uuid: str, l3_uuid: str) -> set[tuple[str, str]]:
        xml = (await self.networks(host_uuid)).get(f"zs-dhcp-{l3_uuid}")
        assert xml is not None, f"no DHCP network of {l3_uuid} on {host_uuid}"
        return {(h.get("mac"), h.get("ip")) for h in ET.fromstring(xml).findall("ip/dhcp/host")}  # type: ignore[misc]

    async def l3(self, cidr: str, l2: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        if l2 is None:
            l2 = (await self.call("CreateL2VlanNetwork", name="l2", zoneUuid=self.zone.uuid, physicalInterface="eth0",
                                  vlan=int(cidr.split(".")[1]))).inventory
            await self.call("AttachL2NetworkToCluster", l2NetworkUuid=l2.uuid, clusterUuid=self.cluster.uuid)
        l3 = (await self.call("CreateL3Network", name=f"l3-{cidr}", l2NetworkUuid=l2.uuid, **kwargs)).inventory
        await self.call("AddIpRangeByNetworkCidr", l3NetworkUuid=l3.uuid, networkCidr=cidr)
        return l2, l3

    async def vm(self, l3_uuids: list[str], **kwargs: Any) -> Any:
        return (await self.call("CreateVmInstance", name="vm", cpuNum=1, memorySize=64 << 20, l3NetworkUuids=l3_uuids,
                                **kwargs)).inventory

    async def add_host(self, cluster: Any = None) -> Any:
        host = (await self.call("AddKVMHost", name=f"h{len(self.hosts)}", clusterUuid=(cluster or self.cluster).uuid,
                                url=self.driver())).inventory
        self.hosts.append(host)
        return host


@pytest.fixture
async def cloud(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cloud]:
    monkeypatch.setenv("ZSTACK_ADMIN_PASSWORD", "password")
    count = iter(range(100))

    def driver() -> str:
        path = tmp_path / f"driver{next(count)}.xml"
        path.write_text(textwrap.dedent("""\
            <node><cpu><mhz>2000</mhz><model>i686</model><active>4</active><nodes>1</nodes>
            <sockets>1</sockets><cores>4</cores><threads>1</threads></cpu><memory>4194304</memory></node>"""))
        return f"test://{path}"

    fail, recorder = FailAt(), RealizeRecorder()
    node = ManagementNode(data_dir=data_dir, disabled_plugins=["storage"], plugins=[fail, recorder])
    await node.start()
    try:
        assert {"compute", "network"} <= set(node.services)
        zone = (await node.api_call("CreateZone", name="zone")).inventory
        cluster = (await node.api_call("CreateCluster", name="cluster", zoneUuid=zone.uuid)).inventory
        c = Cloud(node=node, zone=zone, cluster=cluster, hosts=[], driver=driver, fail=fail, recorder=recorder)
        await c.add_host()
        yield c
    finally:
        await node.stop()


async def test_l2_follows_clusters_and_hosts(cloud: Cloud) -> None:
    l2 = (await cloud.call("CreateL2VlanNetwork", name="l2", zoneUuid=cloud.zone.uuid, physicalInterface="eth1",
                           vlan=42)).inventory
    name = f"zs-l2-{l2.uuid}"
    second = await cloud.add_host()
    assert name not in await cloud.networks(second.uuid)
    inv = (await cloud.call("AttachL2NetworkToCluster", l2NetworkUuid=l2.uuid, clusterUuid=cloud.cluster.uuid)).inventory
    assert inv.attached_cluster_uuids == [cloud.cluster.uuid]
    for host in cloud.hosts:
        xml = ET.fromstring((await cloud.networks(host.uuid))[name])
        assert (xml.find("forward").get("mode"), xml.find("bridge").get("name")) == ("bridge", "br_eth1_42")  # type: ignore[union-attr]
    third = await cloud.add_host()  # a host that connects later gets it through zstack_host_connected
    assert name in await cloud.networks(third.uuid)
    refs = await cloud.node.db.run(lambda: L2NetworkHostRefVO.select().count())
    assert refs == 3

    # Other plugins hear of each realization through zstack_l2_realize_on_host...
    assert sorted(cloud.recorder.calls) == sorted((l2.uuid, h.uuid) for h in cloud.hosts)
    # ...and may refuse one: the attach fails and is undone on every host.
    refused_l2 = (await cloud.call("CreateL2NoVlanNetwork", name="refuse-me", zoneUuid=cloud.zone.uuid,
                                   physicalInterface="eth2")).inventory
    await refused(cloud.node, "SYS.1006", cloud.call("AttachL2NetworkToCluster", l2NetworkUuid=refused_l2.uuid,
                                                     clusterUuid=cloud.cluster.uuid), "refuses")
    for host in cloud.hosts:
        assert f"zs-l2-{refused_l2.uuid}" not in await cloud.networks(host.uuid)

    other_zone = (await cloud.call("CreateZone", name="z2")).inventory
    other = (await cloud.call("CreateCluster", name="c2", zoneUuid=other_zone.uuid)).inventory
    await refused(cloud.node, "L2.1000", cloud.call("AttachL2NetworkToCluster", l2NetworkUuid=l2.uuid,
                                                    clusterUuid=other.uuid), "zone")

    await cloud.call("DetachL2NetworkFromCluster", l2NetworkUuid=l2.uuid, clusterUuid=cloud.cluster.uuid)
    for host in cloud.hosts:
        assert name not in await cloud.networks(host.uuid)
    assert await cloud.node.db.run(lambda: L2NetworkHostRefVO.select().count()) == 0


async def test_vm_gets_nics_on_bridges_with_dhcp_entries_and_gives_them_back(cloud: Cloud) -> None:
    l2, l3 = await cloud.l3("10.60.0.0/24", dns=["10.60.0.53"], dnsDomain="zs.test")
    _, l3b = await cloud.l3("10.61.0.0/24")
    vm = await cloud.vm([l3.uuid, l3b.uuid], systemTags=[f"staticIp::{l3b.uuid}::10.61.0.77"])
    assert vm.state == "Running"
    nics = vm.vm_nics
    assert [(n.device_id, n.l3_network_uuid, n.ip) for n in nics] == [(0, l3.uuid, "10.60.0.2"),
                                                                      (1, l3b.uuid, "10.61.0.77")]
    host = vm.host_uuid
    assert await cloud.interfaces(host, vm.uuid) == [(nics[0].mac, "br_eth0_60"), (nics[1].mac, "br_eth0_61")]
    assert await cloud.dhcp_hosts(host, l3.uuid) == {(nics[0].mac, "10.60.0.2")}
    assert await cloud.dhcp_hosts(host, l3b.uuid) == {(nics[1].mac, "10.61.0.77")}
    dhcp = ET.fromstring((await cloud.networks(host))[f"zs-dhcp-{l3.uuid}"])
    assert dhcp.find("ip").attrib == {"address": "10.60.0.1", "netmask": "255.255.255.0"}  # type: ignore[union-attr]
    assert [f.get("addr") for f in dhcp.findall("dns/forwarder")] == ["10.60.0.53"]
    queried = (await cloud.call("QueryVmInstance", conditions=[{"name": "uuid", "op": "=", "value": vm.uuid}]))
    assert [n.uuid for n in queried.inventories[0].vm_nics] == [n.uuid for n in nics]

    # A second VM on the same L3 network: the DHCP server learns it, the first entry stays.
    vm2 = await cloud.vm([l3.uuid])
    assert await cloud.dhcp_hosts(host, l3.uuid) == {(nics[0].mac, "10.60.0.2"), (vm2.vm_nics[0].mac, "10.60.0.3")}

    # Stop and start: the same NICs come back on the same bridges.
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    vm = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory
    assert [(n.uuid, n.ip) for n in vm.vm_nics] == [(n.uuid, n.ip) for n in nics]
    assert await cloud.interfaces(vm.host_uuid, vm.uuid) == [(nics[0].mac, "br_eth0_60"), (nics[1].mac, "br_eth0_61")]

    # Expunge: NICs, addresses and DHCP entries go.
    await cloud.call("DestroyVmInstance", uuid=vm.uuid)
    await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
    assert [n.vm_instance_uuid for n in await cloud.node.query.find("VmNic")] == [vm2.uuid]
    assert await cloud.dhcp_hosts(host, l3.uuid) == {(vm2.vm_nics[0].mac, "10.60.0.3")}
    assert await cloud.dhcp_hosts(host, l3b.uuid) == set()
    free = (await cloud.call("GetFreeIp", l3NetworkUuid=l3b.uuid, start="10.61.0.77", limit=1)).inventories
    assert [f.ip for f in free] == ["10.61.0.77"]
    assert l2.uuid


async def test_failed_creates_leave_nothing_behind(cloud: Cloud) -> None:
    _, l3 = await cloud.l3("10.62.0.0/24")
    await cloud.vm([l3.uuid])  # the host now has this L3 network's DHCP server
    host = cloud.hosts[0].uuid
    before_dhcp = await cloud.dhcp_hosts(host, l3.uuid)
    before = await snapshot(cloud.node)

    cloud.fail.armed = True  # fails after NICs and addresses were allocated
    with pytest.raises(ZStackError) as info:
        await cloud.vm([l3.uuid])
    assert info.value.error.caused("SYS.1006")
    cloud.fail.armed = False
    assert await snapshot(cloud.node) == before
    assert await cloud.dhcp_hosts(host, l3.uuid) == before_dhcp

    # Refused before anything is allocated: an unknown L3 network (refused by the API layer),
    # one without ranges, a taken static address, a static address for an L3 network not joined.
    l2 = (await cloud.node.query.find("L2Network"))[0]
    bare = (await cloud.call("CreateL3Network", name="bare", l2NetworkUuid=l2.uuid)).inventory
    before = await snapshot(cloud.node)
    for l3s, tags, code in [(["4" * 32], [], "SYS.1007"), ([bare.uuid], [], "L3.1011"),
                            ([l3.uuid], [f"staticIp::{l3.uuid}::10.62.0.2"], "L3.1004"),
                            ([l3.uuid], [f"staticIp::{bare.uuid}::10.62.0.9"], "L3.1000")]:
        with pytest.raises(ZStackError) as info:
            await cloud.vm(l3s, systemTags=tags)
        assert info.value.error.caused(code), info.value.error
    assert await snapshot(cloud.node) == before

    # An L3 network whose L2 network is attached to no cluster has no host to go to: the
    # network service's filter (zstack_host_allocator_filters) removes every candidate.
    lone = (await cloud.call("CreateL2NoVlanNetwork", name="lone", zoneUuid=cloud.zone.uuid,
                             physicalInterface="eth7")).inventory
    _, unplaced = await cloud.l3("10.63.0.0/24", l2=lone)
    before = await snapshot(cloud.node)
    with pytest.raises(ZStackError) as info:
        await cloud.vm([unplaced.uuid])
    assert "L2NetworkAttachedFilter" in str(info.value.error), info.value.error
    assert await snapshot(cloud.node) == before
    assert await cloud.node.db.run(lambda: (VmNicVO.select().count(), UsedIpVO.select().count())) == (1, 1)


async def test_attach_and_detach_l3_network(cloud: Cloud) -> None:
    _, l3 = await cloud.l3("10.64.0.0/24")
    _, extra = await cloud.l3("10.65.0.0/24")
    vm = await cloud.vm([l3.uuid])
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    event = await cloud.call("AttachL3NetworkToVm", vmInstanceUuid=vm.uuid, l3NetworkUuid=extra.uuid,
                             staticIp="10.65.0.9")
    assert (event.nic.ip, event.nic.device_id) == ("10.65.0.9", 1)
    vm = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory
    assert [m for m, _ in await cloud.interfaces(vm.host_uuid, vm.uuid)] == [n.mac for n in vm.vm_nics]
    assert await cloud.dhcp_hosts(vm.host_uuid, extra.uuid) == {(event.nic.mac, "10.65.0.9")}
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    await cloud.call("DetachL3NetworkFromVm", vmNicUuid=event.nic.uuid)
    vm = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory
    assert [n.l3_network_uuid for n in vm.vm_nics] == [l3.uuid]
    assert len(await cloud.interfaces(vm.host_uuid, vm.uuid)) == 1
    assert await cloud.dhcp_hosts(vm.host_uuid, extra.uuid) == set()
    free = (await cloud.call("CheckIpAvailability", l3NetworkUuid=extra.uuid, ip="10.65.0.9"))
    assert free.available


def _kvm_backend(node: ManagementNode) -> Any:
    """Compute's backend for KVM hosts, registered through zstack_security_group_backends."""
    return next(b for b in node.extension("security_group_backends") if b.hypervisor_type == "KVM")


async def test_security_group_rules_follow_vms_and_changes(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    _, l3 = await cloud.l3("10.66.0.0/24")
    backend = _kvm_backend(cloud.node)
    calls: list[tuple[str, str, int]] = []
    real_apply = backend.apply_rules

    async def counting(host: Any, vm_uuid: str, rules: Any) -> None:
        calls.append((host.uuid, vm_uuid, len(rules)))
        await real_apply(host, vm_uuid, rules)

    monkeypatch.setattr(backend, "apply_rules", counting)
    web = (await cloud.call("CreateSecurityGroup", name="web")).inventory
    other = (await cloud.call("CreateSecurityGroup", name="other")).inventory
    await cloud.call("AttachSecurityGroupToL3Network", securityGroupUuid=web.uuid, l3NetworkUuid=l3.uuid)
    vm = await cloud.vm([l3.uuid])
    vm2 = await cloud.vm([l3.uuid])
    key = (vm.host_uuid, vm.uuid)
    await cloud.call("AddVmNicToSecurityGroup", securityGroupUuid=web.uuid, vmNicUuids=[vm.vm_nics[0].uuid])
    await cloud.call("AddSecurityGroupRule", securityGroupUuid=web.uuid, rules=[
        {"type": "ingress", "protocol": "tcp", "startPort": 80, "endPort": 80}])
    assert "tcp dport 80 accept" in backend.rulesets[key]
    assert vm.vm_nics[0].mac in backend.rulesets[key]
    assert (vm2.host_uuid, vm2.uuid) not in backend.rulesets  # not a member: not filtered

    # A change to an unrelated group re-applies nothing; a change to web re-applies vm only.
    calls.clear()
    await cloud.call("AddSecurityGroupRule", securityGroupUuid=other.uuid, rules=[
        {"type": "ingress", "protocol": "udp", "startPort": 53, "endPort": 53}])
    assert calls == []
    await cloud.call("AddSecurityGroupRule", securityGroupUuid=web.uuid, rules=[
        {"type": "ingress", "protocol": "tcp", "startPort": 22, "endPort": 22, "remoteSecurityGroupUuid": web.uuid}])
    assert calls == [(vm.host_uuid, vm.uuid, 3)]
    assert f"ip saddr {{ {vm.vm_nics[0].ip} }} meta l4proto tcp tcp dport 22 accept" in backend.rulesets[key]
    # vm2 joins web: vm's remote-group rule now names vm2's address too (both re-applied).
    calls.clear()
    await cloud.call("AddVmNicToSecurityGroup", securityGroupUuid=web.uuid, vmNicUuids=[vm2.vm_nics[0].uuid])
    assert sorted(v for _, v, _ in calls) == sorted([vm.uuid, vm2.uuid])
    assert vm2.vm_nics[0].ip in backend.rulesets[key]

    # Rules leave with the VM when it stops and come back when it starts.
    await cloud.call("StopVmInstance", uuid=vm.uuid)
    assert key not in backend.rulesets
    vm = (await cloud.call("StartVmInstance", uuid=vm.uuid)).inventory
    assert "tcp dport 80 accept" in backend.rulesets[(vm.host_uuid, vm.uuid)]
    # Leaving the group takes them away.
    await cloud.call("DeleteVmNicFromSecurityGroup", securityGroupUuid=web.uuid, vmNicUuids=[vm.vm_nics[0].uuid])
    assert (vm.host_uuid, vm.uuid) not in backend.rulesets

    # No backend for the hypervisor type: a clear error, the change itself still stored.
    monkeypatch.setitem(cloud.node.extensions, "security_group_backends", [])
    report = await cloud.node.services["network"].apply_vms([vm2.uuid], force=True)  # type: ignore[attr-defined]
    error = report.errors[vm2.uuid]
    assert error.code == "SG.1003" and "'KVM'" in error.details


async def test_reconnecting_host_gets_its_networks_back(cloud: Cloud) -> None:
    l2, l3 = await cloud.l3("10.67.0.0/24")
    vm = await cloud.vm([l3.uuid])
    host = vm.host_uuid
    names = (f"zs-l2-{l2.uuid}", f"zs-dhcp-{l3.uuid}")

    def wipe(conn: Any) -> None:  # as if the host rebooted without our networks
        for name in names:
            net = conn.networkLookupByName(name)
            net.destroy()
            net.undefine()

    await cloud.on_host(host, wipe)
    assert not set(names) & set(await cloud.networks(host))
    await cloud.call("ReconnectHost", uuid=host)
    assert set(names) <= set(await cloud.networks(host))
    assert await cloud.dhcp_hosts(host, l3.uuid) == {(vm.vm_nics[0].mac, vm.vm_nics[0].ip)}


async def test_deleting_cluster_and_zone_cascades(cloud: Cloud) -> None:
    l2, l3 = await cloud.l3("10.68.0.0/24")
    await cloud.vm([l3.uuid])
    await cloud.call("DeleteCluster", uuid=cloud.cluster.uuid)
    assert (await cloud.node.query.find("L2Network"))[0].attached_cluster_uuids == []
    assert await cloud.node.query.find("VmNic") == []  # compute expunged the VMs; their NICs went
    counts = await cloud.node.db.run(lambda: (L2NetworkHostRefVO.select().count(),
                                              DhcpNetworkHostRefVO.select().count(), UsedIpVO.select().count()))
    assert counts == (0, 0, 0)
    await cloud.call("DeleteZone", uuid=cloud.zone.uuid)
    assert await cloud.node.query.find("L2Network") == [] and await cloud.node.query.find("L3Network") == []
    assert await cloud.node.query.find("IpRange") == []
    assert l2.uuid and l3.uuid


async def test_deleting_a_host_forgets_what_it_held(cloud: Cloud) -> None:
    """``zstack_host_after_delete``: the network service drops its records of the host."""
    _, l3 = await cloud.l3("10.69.0.0/24")
    vm = await cloud.vm([l3.uuid])
    await cloud.call("DestroyVmInstance", uuid=vm.uuid)
    await cloud.call("ExpungeVmInstance", uuid=vm.uuid)
    host = cloud.hosts[0].uuid
    refs = await cloud.node.db.run(lambda: (L2NetworkHostRefVO.select().where(L2NetworkHostRefVO.host_uuid == host)
                                            .count(), DhcpNetworkHostRefVO.select().count()))
    assert refs == (1, 1)
    await cloud.call("DeleteHost", uuid=host)
    refs = await cloud.node.db.run(lambda: (L2NetworkHostRefVO.select().count(), DhcpNetworkHostRefVO.select().count()))
    assert refs == (0, 0)


async def test_many_vms_at_once_all_get_dhcp_entries(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent creates on one L3 network: every NIC ends up in the host's DHCP server, and
    syncs that wait their turn are shared rather than repeated (fewer trips to the host than NICs)."""
    import asyncio

    from zstack_network import dhcp

    _, l3 = await cloud.l3("10.70.0.0/24")
    first = await cloud.vm([l3.uuid])  # the host gets the DHCP server
    trips = 0
    real = dhcp.reconcile_fn

    def counting(spec: Any) -> Any:
        nonlocal trips
        trips += 1
        return real(spec)

    monkeypatch.setattr(dhcp, "reconcile_fn", counting)
    vms = await asyncio.gather(*(cloud.vm([l3.uuid]) for _ in range(20)))
    nics = {(v.vm_nics[0].mac, v.vm_nics[0].ip) for v in [first, *vms]}
    assert len({ip for _, ip in nics}) == 21
    assert await cloud.dhcp_hosts(first.host_uuid, l3.uuid) == nics
    print(f"\n20 concurrent VM creates: {trips} DHCP reconciles on the host")
    assert trips < 20, trips
