"""L2/L3 networks, IP ranges, reserved ranges, free-IP queries and NIC allocation through the
APIs and bus messages, on a node running only zstack-core and zstack-network.

Every refused call is checked twice: the ErrorCode it gives, and that nothing changed (every
network table's rows are the same before and after).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

import zstack_network.plugin
from zstack_core import ManagementNode, ZStackError, hookimpl, unstructure
from zstack_core.header import L2NetworkInventory
from zstack_core.header.backends import IpAllocationStrategy
from zstack_core.header.messages import AllocateVmNicMsg, AllocateVmNicReply, ReleaseVmNicMsg
from zstack_network.models import MODELS, UsedIpVO

from .conftest import ZONE, Api, make_l3

VM = "f" * 32


async def snapshot(node: ManagementNode) -> dict[str, Any]:
    """Every row of every table of zstack-network (timestamps aside)."""

    def rows() -> dict[str, Any]:
        out = {}
        for model in MODELS:
            data = [{k: v for k, v in r.items() if k not in ("created_at", "updated_at", "applied_at")}
                    for r in model.select().dicts()]
            out[model.__name__] = sorted(data, key=repr)
        return out

    return await node.db.run(rows)


async def refused(node: ManagementNode, code: str, call: Any, *words: str) -> Any:
    """Await ``call``; it must fail with ``code`` (mentioning ``words``) and change nothing."""
    before = await snapshot(node)
    with pytest.raises(ZStackError) as info:
        await call
    assert info.value.code == code, info.value.error
    for word in words:
        assert word in str(info.value.error), info.value.error
    assert await snapshot(node) == before
    return info.value.error


async def nic(node: ManagementNode, l3_uuid: str, ip: str | None = None, vm: str = VM, device_id: int = 0) -> Any:
    reply = await node.bus.call_ok(AllocateVmNicMsg(vm_instance_uuid=vm, l3_network_uuid=l3_uuid, ip=ip,
                                                    device_id=device_id))
    assert isinstance(reply, AllocateVmNicReply)
    return reply


# -- L2 networks -------------------------------------------------------------------------------


async def test_network_alone_starts_serves_and_queries(net_node: ManagementNode, api: Api) -> None:
    assert "network" in net_node.services and "compute" not in net_node.services
    l2 = (await api("CreateL2NoVlanNetwork", name="public", zoneUuid=ZONE, physicalInterface="eth0")).inventory
    vlan = (await api("CreateL2VlanNetwork", name="v100", zoneUuid=ZONE, physicalInterface="eth0", vlan=100)).inventory
    assert (l2.type, l2.vlan, l2.bridge_name) == ("L2NoVlanNetwork", None, "br_eth0")
    assert (vlan.type, vlan.vlan, vlan.bridge_name, vlan.vlan_interface) == ("L2VlanNetwork", 100, "br_eth0_100",
                                                                            "eth0.100")
    found = (await api("QueryL2Network", conditions=[{"name": "vlan", "op": "=", "value": 100}])).inventories
    assert [f.uuid for f in found] == [vlan.uuid]
    assert unstructure(found[0])["attachedClusterUuids"] == []


def test_bridge_names_always_fit_linux_limits() -> None:
    long = L2NetworkInventory(uuid="x", name="x", zone_uuid="z", physical_interface="enp129s0f1np1", vlan=4094)
    assert len(long.bridge_name) <= 15 and long.bridge_name.startswith("br_")
    assert len(long.vlan_interface or "") <= 15
    other = attrs.evolve(long, vlan=4093)
    assert other.bridge_name != long.bridge_name


@pytest.mark.parametrize(("kwargs", "code", "word"), [
    ({"vlan": 0}, "L2.1001", "1..4094"),
    ({"vlan": 4095}, "L2.1001", "1..4094"),
    ({"vlan": -3}, "L2.1001", "1..4094"),
    ({"vlan": "100"}, "SYS.1007", "vlan"),
    ({"physicalInterface": "eth 0"}, "L2.1006", "interface"),
    ({"physicalInterface": "a-name-way-too-long"}, "L2.1006", "interface"),
    ({"physicalInterface": "../etc"}, "L2.1006", "interface"),
    ({"name": " "}, "SYS.1007", "name"),
    ({"resourceUuid": "not-a-uuid"}, "SYS.1007", "resourceUuid"),
    ({"bogus": 1}, "SYS.1007", "bogus"),
])
async def test_bad_l2_input_changes_nothing(net_node: ManagementNode, api: Api, kwargs: dict[str, Any], code: str,
                                            word: str) -> None:
    params = {"name": "v", "zoneUuid": ZONE, "physicalInterface": "eth0", "vlan": 10, **kwargs}
    await refused(net_node, code, api("CreateL2VlanNetwork", **params), word)


async def test_two_l2_networks_on_one_bridge_are_refused(net_node: ManagementNode, api: Api) -> None:
    await api("CreateL2VlanNetwork", name="a", zoneUuid=ZONE, physicalInterface="eth1", vlan=7)
    await refused(net_node, "L2.1002", api("CreateL2VlanNetwork", name="b", zoneUuid=ZONE, physicalInterface="eth1",
                                           vlan=7), "br_eth1_7")
    # Another zone has its own hosts and bridges.
    await api("CreateL2VlanNetwork", name="c", zoneUuid="2" * 32, physicalInterface="eth1", vlan=7)


async def test_attach_without_compute_says_why(net_node: ManagementNode, api: Api) -> None:
    l2 = (await api("CreateL2NoVlanNetwork", name="a", zoneUuid=ZONE, physicalInterface="eth0")).inventory
    await refused(net_node, "SYS.1004", api("AttachL2NetworkToCluster", l2NetworkUuid=l2.uuid, clusterUuid="3" * 32),
                  "no loaded plugin provides clusters")


async def test_delete_l2_with_l3_is_refused_then_works(net_node: ManagementNode, api: Api) -> None:
    l2, l3, _ = await make_l3(api)
    await refused(net_node, "L2.1004", api("DeleteL2Network", uuid=l2.uuid), "L3")
    await api("DeleteL3Network", uuid=l3.uuid)
    await api("DeleteL2Network", uuid=l2.uuid)
    assert await snapshot(net_node) == {m.__name__: [] for m in MODELS}


# -- L3 networks -------------------------------------------------------------------------------


async def test_l3_network_fields_dns_and_strategy(net_node: ManagementNode, api: Api) -> None:
    l2 = (await api("CreateL2NoVlanNetwork", name="a", zoneUuid=ZONE, physicalInterface="eth0")).inventory
    l3 = (await api("CreateL3Network", name="l3", l2NetworkUuid=l2.uuid, dns=["8.8.8.8", "1.1.1.1"],
                    dnsDomain="zs.test", systemTags=["ipAllocationStrategy::Random"])).inventory
    assert (l3.zone_uuid, l3.dns, l3.dns_domain, l3.ip_allocation_strategy) == (ZONE, ["8.8.8.8", "1.1.1.1"],
                                                                                "zs.test", "Random")
    l3 = (await api("AddDnsToL3Network", l3NetworkUuid=l3.uuid, dns="9.9.9.9")).inventory
    assert l3.dns == ["8.8.8.8", "1.1.1.1", "9.9.9.9"]
    l3 = (await api("RemoveDnsFromL3Network", l3NetworkUuid=l3.uuid, dns="1.1.1.1")).inventory
    assert l3.dns == ["8.8.8.8", "9.9.9.9"]
    await refused(net_node, "L3.1000", api("AddDnsToL3Network", l3NetworkUuid=l3.uuid, dns="9.9.9.9"), "already")
    await refused(net_node, "L3.1000", api("RemoveDnsFromL3Network", l3NetworkUuid=l3.uuid, dns="4.4.4.4"), "not set")
    tags = (await api("QuerySystemTag", conditions=[{"name": "resourceUuid", "op": "=", "value": l3.uuid}])).inventories
    assert [t.tag for t in tags] == ["ipAllocationStrategy::Random"]


@pytest.mark.parametrize(("kwargs", "code", "word"), [
    ({"dns": ["8.8.8"]}, "SYS.1007", "DNS"),
    ({"dns": ["8.8.8.8", "8.8.8.8"]}, "SYS.1007", "twice"),
    ({"dnsDomain": "bad domain"}, "SYS.1007", "domain"),
    ({"ipAllocationStrategy": "Sequential"}, "L3.1009", "FirstAvailable"),
    ({"systemTags": ["ipAllocationStrategy::Nope"]}, "L3.1009", "Nope"),
    ({"systemTags": ["frobnicate::yes"]}, "SYS.1007", "frobnicate"),
    ({"l2NetworkUuid": "9" * 32}, "SYS.1004", "L2"),
    ({"type": "L3VpcNetwork"}, "SYS.1007", "type"),
])
async def test_bad_l3_input_changes_nothing(net_node: ManagementNode, api: Api, kwargs: dict[str, Any], code: str,
                                            word: str) -> None:
    l2 = (await api("CreateL2NoVlanNetwork", name="a", zoneUuid=ZONE, physicalInterface="eth0")).inventory
    await refused(net_node, code, api("CreateL3Network", **{"name": "l3", "l2NetworkUuid": l2.uuid, **kwargs}), word)


# -- IP ranges ---------------------------------------------------------------------------------


async def test_ranges_share_a_subnet_and_never_overlap_on_one_l2(net_node: ManagementNode, api: Api) -> None:
    l2 = (await api("CreateL2NoVlanNetwork", name="a", zoneUuid=ZONE, physicalInterface="eth0")).inventory
    l3 = (await api("CreateL3Network", name="l3", l2NetworkUuid=l2.uuid)).inventory
    sibling = (await api("CreateL3Network", name="sibling", l2NetworkUuid=l2.uuid)).inventory
    r1 = (await api("AddIpRange", l3NetworkUuid=l3.uuid, startIp="10.0.0.10", endIp="10.0.0.20",
                    netmask="255.255.255.0", gateway="10.0.0.1")).inventory
    assert (r1.network_cidr, r1.gateway, r1.netmask) == ("10.0.0.0/24", "10.0.0.1", "255.255.255.0")
    good = dict(l3NetworkUuid=l3.uuid, netmask="255.255.255.0", gateway="10.0.0.1")
    await api("AddIpRange", startIp="10.0.0.30", endIp="10.0.0.40", **good)  # same subnet, disjoint: fine
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"startIp": "10.0.0.15", "endIp": "10.0.0.25"}, "L3.1001", "overlaps"),
        ({"startIp": "10.0.0.5", "endIp": "10.0.0.50"}, "L3.1001", "overlaps"),
        ({"startIp": "10.0.0.20", "endIp": "10.0.0.20"}, "L3.1001", "overlaps"),
        ({"startIp": "10.0.0.50", "endIp": "10.0.1.5"}, "L3.1005", "outside"),
        ({"startIp": "10.0.0.50", "endIp": "10.0.0.60", "gateway": "10.0.0.55"}, "L3.1005", "inside"),
        ({"startIp": "10.0.0.50", "endIp": "10.0.0.60", "gateway": "10.0.0.254"}, "L3.1008", "gateway"),
        ({"startIp": "10.0.0.50", "endIp": "10.0.0.60", "netmask": "255.255.0.0"}, "L3.1008", "10.0.0.0/16"),
        ({"startIp": "10.0.0.50", "endIp": "10.0.0.2600"}, "SYS.1007", "endIp"),
        ({"l3NetworkUuid": "8" * 32, "startIp": "10.0.0.50", "endIp": "10.0.0.60"}, "SYS.1004", "L3"),
    ]
    for change, code, word in cases:
        await refused(net_node, code, api("AddIpRange", **{**good, **change}), word)
    # The sibling L3 shares the broadcast domain: no overlap there either, whatever its subnet.
    await refused(net_node, "L3.1001", api("AddIpRangeByNetworkCidr", l3NetworkUuid=sibling.uuid,
                                           networkCidr="10.0.0.0/24"), "sibling" if False else "overlaps")
    await api("AddIpRangeByNetworkCidr", l3NetworkUuid=sibling.uuid, networkCidr="10.0.1.0/24")
    # An L3 network on another L2 network may reuse the addresses.
    _, other, _ = await make_l3(api, cidr="10.0.0.0/24", physical_interface="eth9")
    assert other.uuid
    await refused(net_node, "SYS.1007", api("AddIpRangeByNetworkCidr", l3NetworkUuid=sibling.uuid,
                                            networkCidr="10.0.2.0/33"), "networkCidr")


async def test_add_ip_range_by_cidr_gateway_first_or_last(net_node: ManagementNode, api: Api) -> None:
    _, l3, rng = await make_l3(api, cidr="192.168.7.0/28")
    assert (rng.start_ip, rng.end_ip, rng.gateway) == ("192.168.7.2", "192.168.7.14", "192.168.7.1")
    l2 = (await api("CreateL2NoVlanNetwork", name="b", zoneUuid=ZONE, physicalInterface="eth3")).inventory
    l3b = (await api("CreateL3Network", name="b", l2NetworkUuid=l2.uuid)).inventory
    last = (await api("AddIpRangeByNetworkCidr", l3NetworkUuid=l3b.uuid, networkCidr="192.168.8.0/28",
                      gateway="192.168.8.14")).inventory
    assert (last.start_ip, last.end_ip) == ("192.168.8.1", "192.168.8.13")
    await refused(net_node, "L3.1005", api("AddIpRangeByNetworkCidr", l3NetworkUuid=l3b.uuid,
                                           networkCidr="192.168.9.0/28", gateway="192.168.9.5"), "first")


async def test_free_ips_and_availability(net_node: ManagementNode, api: Api) -> None:
    _, l3, rng = await make_l3(api, cidr="10.5.0.0/28")  # .2 - .14, gateway .1
    await nic(net_node, l3.uuid, ip="10.5.0.3")
    await api("AddReservedIpRange", l3NetworkUuid=l3.uuid, startIp="10.5.0.5", endIp="10.5.0.6")
    free = (await api("GetFreeIp", l3NetworkUuid=l3.uuid, limit=5)).inventories
    assert [f.ip for f in free] == ["10.5.0.2", "10.5.0.4", "10.5.0.7", "10.5.0.8", "10.5.0.9"]
    assert {(f.ip_range_uuid, f.gateway, f.netmask) for f in free} == {(rng.uuid, "10.5.0.1", "255.255.255.240")}
    later = (await api("GetFreeIp", ipRangeUuid=rng.uuid, start="10.5.0.12")).inventories
    assert [f.ip for f in later] == ["10.5.0.12", "10.5.0.13", "10.5.0.14"]
    assert (await api("GetFreeIp", l3NetworkUuid=l3.uuid, limit=0)).inventories == []
    for ip, available, reason in [("10.5.0.2", True, ""), ("10.5.0.3", False, "in use"), ("10.5.0.5", False, "reserved"),
                                  ("10.5.0.1", False, "gateway"), ("10.5.0.15", False, "not in any IP range"),
                                  ("172.16.0.1", False, "not in any IP range")]:
        reply = await api("CheckIpAvailability", l3NetworkUuid=l3.uuid, ip=ip)
        assert (reply.available, reply.reason) == (available, reason), ip
    await refused(net_node, "SYS.1007", api("CheckIpAvailability", l3NetworkUuid=l3.uuid, ip="10.5.0"), "ip")
    await refused(net_node, "SYS.1007", api("GetFreeIp", l3NetworkUuid=l3.uuid, ipRangeUuid=rng.uuid), "exactly one")
    await refused(net_node, "SYS.1007", api("GetFreeIp", l3NetworkUuid=l3.uuid, limit=-1), "limit")


async def test_reserved_addresses_are_never_allocated(net_node: ManagementNode, api: Api) -> None:
    _, l3, _ = await make_l3(api, cidr="10.6.0.0/29")  # .2 - .6
    taken = (await nic(net_node, l3.uuid)).nic
    assert taken.ip == "10.6.0.2"
    await refused(net_node, "L3.1004", api("AddReservedIpRange", l3NetworkUuid=l3.uuid, startIp="10.6.0.1",
                                           endIp="10.6.0.3"), "10.6.0.2")
    await refused(net_node, "L3.1005", api("AddReservedIpRange", l3NetworkUuid=l3.uuid, startIp="10.6.0.5",
                                           endIp="10.6.0.3"), "after")
    reserved = (await api("AddReservedIpRange", l3NetworkUuid=l3.uuid, startIp="10.6.0.3", endIp="10.6.0.5")).inventory
    got = [(await nic(net_node, l3.uuid, device_id=i)).nic.ip for i in range(1, 2)]
    assert got == ["10.6.0.6"]
    await refused(net_node, "L3.1002", nic(net_node, l3.uuid), "no free")
    await refused(net_node, "L3.1004", nic(net_node, l3.uuid, ip="10.6.0.4"), "reserved")
    await api("DeleteReservedIpRange", uuid=reserved.uuid)
    assert (await nic(net_node, l3.uuid, ip="10.6.0.4")).nic.ip == "10.6.0.4"


async def test_delete_ip_range_in_use_is_refused(net_node: ManagementNode, api: Api) -> None:
    _, l3, rng = await make_l3(api, cidr="10.7.0.0/29")
    reply = await nic(net_node, l3.uuid)
    await refused(net_node, "L3.1006", api("DeleteIpRange", uuid=rng.uuid), "10.7.0.2")
    await refused(net_node, "L3.1007", api("DeleteL3Network", uuid=l3.uuid), "NIC")
    await net_node.bus.call_ok(ReleaseVmNicMsg(nic_uuid=reply.nic.uuid))
    await net_node.bus.call_ok(ReleaseVmNicMsg(nic_uuid=reply.nic.uuid))  # idempotent
    await api("DeleteIpRange", uuid=rng.uuid)
    assert (await api("QueryIpRange")).inventories == []


# -- NICs --------------------------------------------------------------------------------------


async def test_nic_allocation_requested_and_chosen(net_node: ManagementNode, api: Api) -> None:
    l2, l3, _ = await make_l3(api, cidr="10.8.0.0/24", vlan=8)
    first = await nic(net_node, l3.uuid)
    assert re.fullmatch(r"fa(:[0-9a-f]{2}){5}", first.nic.mac)
    assert (first.nic.ip, first.nic.gateway, first.nic.netmask, first.nic.device_id) == ("10.8.0.2", "10.8.0.1",
                                                                                       "255.255.255.0", 0)
    assert (first.nic_to.bridge, first.nic_to.mac, first.nic_to.nic_uuid) == (l2.bridge_name, first.nic.mac,
                                                                             first.nic.uuid)
    # The same device id again goes to the lowest free one.
    second = await nic(net_node, l3.uuid, ip="10.8.0.77", device_id=0)
    assert (second.nic.ip, second.nic.device_id) == ("10.8.0.77", 1)
    await refused(net_node, "L3.1004", nic(net_node, l3.uuid, ip="10.8.0.77"), "in use")
    await refused(net_node, "L3.1004", nic(net_node, l3.uuid, ip="10.8.0.1"), "gateway")
    await refused(net_node, "L3.1003", nic(net_node, l3.uuid, ip="10.9.0.5"), "no IP range")
    await refused(net_node, "SYS.1007", nic(net_node, l3.uuid, ip="10.9.0"), "ip")
    await refused(net_node, "SYS.1004", nic(net_node, "7" * 32), "L3")
    found = (await api("QueryVmNic", conditions=[{"name": "vmInstanceUuid", "op": "=", "value": VM}],
                       sortBy="deviceId")).inventories
    assert [(n.ip, n.device_id) for n in found] == [("10.8.0.2", 0), ("10.8.0.77", 1)]


async def test_random_strategy_stays_in_range_and_spreads(net_node: ManagementNode, api: Api) -> None:
    _, l3, _ = await make_l3(api, cidr="10.9.0.0/24", strategy="Random")
    ips = [(await nic(net_node, l3.uuid, vm=f"{i:032x}")).nic.ip for i in range(20)]
    assert len(set(ips)) == 20
    assert all(ip.startswith("10.9.0.") and 2 <= int(ip.rsplit(".", 1)[1]) <= 254 for ip in ips)
    assert sorted(ips) != [f"10.9.0.{i}" for i in range(2, 22)]  # not simply the first twenty


async def test_failed_ip_allocation_leaves_no_nic(net_node: ManagementNode, api: Api) -> None:
    _, l3, _ = await make_l3(api, cidr="10.11.0.0/30")  # one address: .2
    await nic(net_node, l3.uuid)
    before = await net_node.db.run(lambda: UsedIpVO.select().count())
    await refused(net_node, "L3.1002", nic(net_node, l3.uuid, vm="e" * 32), "no free")
    assert await net_node.db.run(lambda: UsedIpVO.select().count()) == before


async def test_the_database_refuses_a_second_owner_of_an_address_or_mac(net_node: ManagementNode, api: Api,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guarantee is the schema's: a duplicate address or MAC cannot be written at all, and an
    allocation that draws a taken MAC draws again."""
    from zstack_network import nic as nic_module

    _, l3, rng = await make_l3(api, cidr="10.12.0.0/29")
    first = (await nic(net_node, l3.uuid)).nic

    def duplicate_ip() -> None:
        UsedIpVO.insert(uuid="d" * 32, l3_network_uuid=l3.uuid, ip_range_uuid=rng.uuid, ip=first.ip,
                        ip_int=UsedIpVO.get(UsedIpVO.vm_nic_uuid == first.uuid).ip_int).execute()

    with pytest.raises(ZStackError) as info:
        await net_node.db.run(duplicate_ip)
    assert info.value.code == "SYS.1015"  # node.db maps IntegrityError to "already exists"
    draws = iter([first.mac, "fa:00:00:00:00:2a"])
    monkeypatch.setattr(nic_module, "new_mac", lambda: next(draws))
    second = (await nic(net_node, l3.uuid, vm="9" * 32)).nic
    assert second.mac == "fa:00:00:00:00:2a"  # the taken MAC was refused by the database, then redrawn


class LastAddress:
    """A third-party plugin's IP allocation strategy (``zstack_ip_allocation_strategies``)."""

    @hookimpl
    def zstack_ip_allocation_strategies(self) -> list[IpAllocationStrategy]:
        class Last(IpAllocationStrategy):
            name = "LastAvailable"

            def choose(self, free: Sequence[int], used: set[int]) -> int | None:
                return free[len(free) - 1] if len(free) else None

        return [Last()]


async def test_a_plugin_adds_an_ip_allocation_strategy(data_dir: Path) -> None:
    async with ManagementNode(plugins=[zstack_network.plugin, LastAddress()], load_entry_points=False,
                              data_dir=data_dir) as node:
        async def call(name: str, /, **params: Any) -> Any:
            return await node.api_call(name, params)

        _, l3, _ = await make_l3(call, cidr="10.13.0.0/28", strategy="LastAvailable")
        assert l3.ip_allocation_strategy == "LastAvailable"
        ips = [(await nic(node, l3.uuid, vm=f"{i:032x}")).nic.ip for i in range(3)]
        assert ips == ["10.13.0.14", "10.13.0.13", "10.13.0.12"]
