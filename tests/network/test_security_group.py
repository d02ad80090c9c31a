"""Security groups without hosts: the APIs, rule validation, and the per-VM rules the engine
computes (remote groups become member addresses, egress is open until restricted, a NIC in no
group gets nothing). Applying rules on hosts needs compute: see test_with_compute.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from zstack_core import ManagementNode
from zstack_core.header.messages import AllocateVmNicMsg, ReleaseVmNicMsg
from zstack_network.security_group import rules_digest, vm_rules_sync

from .conftest import Api, make_l3
from .test_l2_l3_api import refused

VM_A, VM_B, VM_C = "a" * 32, "b" * 32, "c" * 32


async def allocate(node: ManagementNode, l3_uuid: str, vm: str) -> Any:
    return (await node.bus.call_ok(AllocateVmNicMsg(vm_instance_uuid=vm, l3_network_uuid=l3_uuid))).nic


def rule(**kw: Any) -> dict[str, Any]:
    return {"type": "ingress", "protocol": "tcp", "startPort": 22, "endPort": 22, **kw}


@pytest.mark.parametrize(("bad", "word"), [
    (rule(startPort=100, endPort=99), "greater than endPort"),
    (rule(startPort=0), "not in 1..65535"),
    (rule(endPort=65536), "not in 1..65535"),
    (rule(startPort=None), "needs startPort"),
    (rule(protocol="icmp"), "tcp and udp only"),
    (rule(protocol="gre"), "protocol"),
    (rule(type="sideways"), "ingress or egress"),
    (rule(allowedCidr="10.0.0.0/33"), "CIDR"),
    (rule(allowedCidr="10.0.0.1/24"), "CIDR"),
    (rule(allowedCidr="banana"), "CIDR"),
    (rule(allowedCidr="10.0.0.0/8", remoteSecurityGroupUuid="9" * 32), "not both"),
])
async def test_bad_rules_are_refused_and_change_nothing(net_node: ManagementNode, api: Api, bad: dict[str, Any],
                                                        word: str) -> None:
    sg = (await api("CreateSecurityGroup", name="web")).inventory
    error = await refused(net_node, "SG.1000", api("AddSecurityGroupRule", securityGroupUuid=sg.uuid,
                                                   rules=[rule(startPort=80, endPort=80), bad]), word)
    assert "rules[1]" in error.details  # which rule, so the caller can fix it


async def test_rules_duplicates_and_remote_group(net_node: ManagementNode, api: Api) -> None:
    web = (await api("CreateSecurityGroup", name="web", description="front")).inventory
    db = (await api("CreateSecurityGroup", name="db")).inventory
    inv = (await api("AddSecurityGroupRule", securityGroupUuid=web.uuid, rules=[
        rule(startPort=80, endPort=443, type="Ingress", protocol="TCP"),
        {"type": "egress", "protocol": "udp", "startPort": 53, "endPort": 53, "allowedCidr": "10.0.0.0/8"},
        {"type": "ingress", "protocol": "icmp"},
    ])).inventory
    assert [(r.type, r.protocol, r.start_port, r.end_port, r.allowed_cidr) for r in inv.rules] == [
        ("ingress", "tcp", 80, 443, "0.0.0.0/0"), ("egress", "udp", 53, 53, "10.0.0.0/8"),
        ("ingress", "icmp", None, None, "0.0.0.0/0")]
    await refused(net_node, "SG.1001", api("AddSecurityGroupRule", securityGroupUuid=web.uuid,
                                           rules=[rule(startPort=80, endPort=443)]), "duplicates")
    await refused(net_node, "SG.1001", api("AddSecurityGroupRule", securityGroupUuid=web.uuid,
                                           rules=[rule(), rule()]), "repeats")
    await refused(net_node, "SYS.1004", api("AddSecurityGroupRule", securityGroupUuid=web.uuid,
                                            rules=[rule(remoteSecurityGroupUuid="9" * 32)]), "security group")
    await refused(net_node, "SYS.1004", api("AddSecurityGroupRule", securityGroupUuid="8" * 32, rules=[rule()]),
                  "security group")
    inv = (await api("AddSecurityGroupRule", securityGroupUuid=db.uuid, rules=[
        rule(startPort=5432, endPort=5432, remoteSecurityGroupUuid=web.uuid)])).inventory
    assert inv.rules[0].remote_security_group_uuid == web.uuid and inv.rules[0].allowed_cidr is None
    queried = (await api("QuerySecurityGroupRule", conditions=[
        {"name": "securityGroupUuid", "op": "=", "value": web.uuid}])).inventories
    assert len(queried) == 3
    gone = (await api("DeleteSecurityGroupRule", ruleUuids=[queried[0].uuid])).inventories
    assert [g.uuid for g in gone] == [queried[0].uuid]
    await refused(net_node, "SYS.1004", api("DeleteSecurityGroupRule", ruleUuids=[queried[0].uuid]), "rule")
    # Deleting web takes the rules that name it as remote with it.
    await api("DeleteSecurityGroup", uuid=web.uuid)
    assert (await api("QuerySecurityGroupRule")).inventories == []
    assert [g.name for g in (await api("QuerySecurityGroup")).inventories] == ["db"]


async def test_members_and_the_rules_each_vm_gets(net_node: ManagementNode, api: Api) -> None:
    _, l3, _ = await make_l3(api, cidr="10.40.0.0/24")
    _, other_l3, _ = await make_l3(api, cidr="10.41.0.0/24", physical_interface="eth5")
    web = (await api("CreateSecurityGroup", name="web")).inventory
    db = (await api("CreateSecurityGroup", name="db")).inventory
    nic_a, nic_b, nic_c = [await allocate(net_node, l3.uuid, vm) for vm in (VM_A, VM_B, VM_C)]
    outsider = await allocate(net_node, other_l3.uuid, VM_A)

    await refused(net_node, "SG.1002", api("AddVmNicToSecurityGroup", securityGroupUuid=web.uuid,
                                           vmNicUuids=[nic_a.uuid]), "not attached")
    await api("AttachSecurityGroupToL3Network", securityGroupUuid=web.uuid, l3NetworkUuid=l3.uuid)
    await api("AttachSecurityGroupToL3Network", securityGroupUuid=db.uuid, l3NetworkUuid=l3.uuid)
    await refused(net_node, "SG.1002", api("AddVmNicToSecurityGroup", securityGroupUuid=web.uuid,
                                           vmNicUuids=[nic_a.uuid, outsider.uuid]), outsider.uuid)
    await refused(net_node, "SYS.1004", api("AddVmNicToSecurityGroup", securityGroupUuid=web.uuid,
                                            vmNicUuids=["5" * 32]), "NIC")
    await api("AddVmNicToSecurityGroup", securityGroupUuid=web.uuid, vmNicUuids=[nic_a.uuid, nic_b.uuid])
    await api("AddVmNicToSecurityGroup", securityGroupUuid=db.uuid, vmNicUuids=[nic_c.uuid])
    await api("AddSecurityGroupRule", securityGroupUuid=web.uuid, rules=[rule(startPort=80, endPort=80)])
    await api("AddSecurityGroupRule", securityGroupUuid=db.uuid, rules=[
        rule(startPort=5432, endPort=5432, remoteSecurityGroupUuid=web.uuid),
        {"type": "egress", "protocol": "tcp", "startPort": 443, "endPort": 443, "allowedCidr": "10.0.0.0/8"}])

    rules_a = await net_node.db.run(vm_rules_sync, VM_A)
    assert {(r.nic_uuid, r.direction, r.protocol, r.start_port, r.cidr) for r in rules_a} == {
        (nic_a.uuid, "ingress", "tcp", 80, "0.0.0.0/0"),
        (nic_a.uuid, "egress", "all", None, "0.0.0.0/0")}  # egress open: web has no egress rule
    assert all(r.mac == nic_a.mac and r.ip == nic_a.ip for r in rules_a)  # the outsider NIC is unprotected
    rules_c = await net_node.db.run(vm_rules_sync, VM_C)
    assert [(r.direction, r.protocol, r.start_port, r.cidr, r.remote_ips) for r in rules_c] == [
        ("egress", "tcp", 443, "10.0.0.0/8", []),
        ("ingress", "tcp", 5432, None, sorted([nic_a.ip, nic_b.ip], key=lambda ip: int(ip.rsplit(".", 1)[1])))]

    # Membership of web changes the rules of db's members (remote IPs), and only theirs.
    digest_c = rules_digest(rules_c)
    await api("DeleteVmNicFromSecurityGroup", securityGroupUuid=web.uuid, vmNicUuids=[nic_b.uuid])
    rules_c2 = await net_node.db.run(vm_rules_sync, VM_C)
    assert rules_c2[1].remote_ips == [nic_a.ip] and rules_digest(rules_c2) != digest_c
    assert await net_node.db.run(vm_rules_sync, VM_B) == []
    await refused(net_node, "SYS.1004", api("DeleteVmNicFromSecurityGroup", securityGroupUuid=web.uuid,
                                            vmNicUuids=[nic_b.uuid]), "not in")
    refs = (await api("QueryVmNicInSecurityGroup")).inventories
    assert {(r.vm_nic_uuid, r.security_group_uuid) for r in refs} == {(nic_a.uuid, web.uuid), (nic_c.uuid, db.uuid)}

    # A released NIC leaves its groups; detaching a group from an L3 network takes its NICs out.
    await net_node.bus.call_ok(ReleaseVmNicMsg(nic_uuid=nic_a.uuid))
    assert (await net_node.db.run(vm_rules_sync, VM_C))[1].remote_ips == []
    await api("DetachSecurityGroupFromL3Network", securityGroupUuid=db.uuid, l3NetworkUuid=l3.uuid)
    assert await net_node.db.run(vm_rules_sync, VM_C) == []
    assert (await api("QueryVmNicInSecurityGroup")).inventories == []
    sg = (await api("QuerySecurityGroup", conditions=[{"name": "uuid", "op": "=", "value": db.uuid}])).inventories[0]
    assert sg.attached_l3_network_uuids == [] and len(sg.rules) == 2
