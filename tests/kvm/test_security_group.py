"""The seed's KVMSecurityGroupBackend: rules rendered as one nftables table per VM, kept in memory
on test hosts, loaded with nft on this machine's libvirtd, re-applied when a host reconnects."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from typing import Any

import pytest

from zstack_core import ZStackError
from zstack_core.header import HostInventory, SecurityGroupRuleTO
from zstack_kvm import security_group
from zstack_kvm.security_group import KVMSecurityGroupBackend, render_ruleset, table_name

from .conftest import Cloud

VM = "0123456789abcdef0123456789abcdef"
MAC = "52:54:00:12:34:56"

RULES = [
    SecurityGroupRuleTO(nic_uuid="n1", mac=MAC, direction="ingress", protocol="tcp", start_port=22, end_port=22,
                        cidr="10.0.0.0/24"),
    SecurityGroupRuleTO(nic_uuid="n1", mac=MAC, direction="ingress", protocol="udp", start_port=5000, end_port=5010,
                        remote_ips=["192.168.1.2", "192.168.1.1"]),
    SecurityGroupRuleTO(nic_uuid="n1", mac=MAC, direction="ingress", protocol="icmp"),
    SecurityGroupRuleTO(nic_uuid="n2", mac="52:54:00:00:00:02", direction="egress", protocol="all",
                        cidr="fd00::/64"),
]

nft = shutil.which("nft")
needs_nft = pytest.mark.skipif(nft is None or os.geteuid() != 0, reason="needs nft and root to check rulesets")


def test_render_ruleset_shape() -> None:
    text = render_ruleset(VM, RULES)
    name = table_name(VM)
    assert name == "zstack_sg_" + VM
    assert text.startswith(f"table bridge {name}\ndelete table bridge {name}\ntable bridge {name} {{")
    assert "    meta l4proto tcp tcp dport 22 accept" not in text  # the peer is part of the rule
    assert "ip saddr 10.0.0.0/24 meta l4proto tcp tcp dport 22 accept" in text
    assert "ip saddr { 192.168.1.1, 192.168.1.2 } meta l4proto udp udp dport 5000-5010 accept" in text
    assert "meta l4proto { icmp, ipv6-icmp } accept" in text
    assert "ip6 daddr fd00::/64 accept" in text
    assert f"ether daddr {MAC} jump ingress_0" in text and f"ether saddr {MAC} jump egress_0" in text
    # a NIC without egress rules may send anything; one with egress rules only what they allow
    egress0 = text.split("chain egress_0 {")[1].split("}")[0]
    egress1 = text.split("chain egress_1 {")[1].split("}")[0]
    assert egress0.split() == ["accept"] and egress1.rstrip().endswith("drop")
    assert render_ruleset(VM, []) == f"table bridge {name}\ndelete table bridge {name}\n"


@needs_nft
@pytest.mark.parametrize("conntrack", [False, True])
def test_rendered_ruleset_is_valid_nftables(conntrack: bool) -> None:
    if conntrack:
        if not asyncio.run(security_group.bridge_conntrack()):
            pytest.skip("this kernel has no bridge connection tracking (nf_conntrack_bridge)")
    result = subprocess.run([nft, "-c", "-f", "-"], input=render_ruleset(VM, RULES, conntrack=conntrack),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_test_hosts_keep_rules_in_memory_and_reapply_on_connect(cloud: Cloud) -> None:
    node = cloud.node
    backends = [b for b in node.extension("security_group_backends") if b.hypervisor_type == "KVM"]
    assert len(backends) == 1 and isinstance(backends[0], KVMSecurityGroupBackend)
    backend: Any = backends[0]
    host = await cloud.host_row()
    await backend.apply_rules(host, VM, RULES)
    assert backend.rulesets[(host.uuid, VM)] == render_ruleset(VM, RULES)
    applied: list[Any] = []
    original = backend.apply_rules

    async def spy(h: Any, vm_uuid: str, rules: Any) -> None:
        applied.append((h.uuid, vm_uuid, len(rules)))
        await original(h, vm_uuid, rules)

    backend.apply_rules = spy
    await cloud.call("ReconnectHost", uuid=host.uuid)
    assert applied == [(host.uuid, VM, len(RULES))]
    await backend.cleanup(host, VM)
    assert (host.uuid, VM) not in backend.rulesets


async def test_remote_hosts_are_refused(cloud: Cloud) -> None:
    backend: Any = next(b for b in cloud.node.extension("security_group_backends") if b.hypervisor_type == "KVM")
    remote = HostInventory(uuid="r" * 32, name="r", zone_uuid="z", cluster_uuid="c",
                           management_url="qemu+ssh://root@192.0.2.1/system")
    with pytest.raises(ZStackError) as info:
        await backend.apply_rules(remote, VM, RULES)
    assert info.value.code == "HOST.1010"
