"""The seed's ``KVMSecurityGroupBackend``: security-group rules as one nftables table per VM.

The network service decides the rules (:class:`~zstack_core.header.SecurityGroupRuleTO`); this
backend renders them into a ``bridge`` table named ``zstack_sg_<vm uuid>`` that filters the
frames of each of the VM's NICs by MAC address:

* ingress (to the VM): ARP and DHCP replies pass; then the rules; everything else is dropped;
* egress (from the VM): everything passes, unless the NIC has egress rules: then ARP, DHCP
  requests and the rules pass, the rest is dropped.

Where the host is this machine's libvirtd (``qemu:///system``) the table is loaded with
``nft -f -`` (one atomic transaction that replaces the old table). On ``test://`` hosts the
rendered ruleset is only kept in memory (there is no guest traffic to filter); remote hosts
(``qemu+ssh://``...) are refused, since nothing runs commands there.

Connection tracking in the ``bridge`` family needs the kernel's ``nf_conntrack_bridge``; when it
is there, replies to connections the VM opened pass (``ct state established,related``). Without
it the table is stateless: TCP segments without SYN pass (replies), other replies must be
allowed by an ingress rule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from zstack_core.header import HostInventory, SecurityGroupRuleTO
from zstack_core.header.backends import SecurityGroupBackend

from .errors import HostErrors

__all__ = ["KVMSecurityGroupBackend", "backend_of", "bridge_conntrack", "render_ruleset", "table_name"]

log = logging.getLogger("zstack.kvm.sg")


def table_name(vm_uuid: str) -> str:
    return f"zstack_sg_{vm_uuid.replace('-', '')}"


def _addr(cidr: str, direction: str) -> str:
    family = "ip6" if ":" in cidr else "ip"
    return f"{family} {'saddr' if direction == 'ingress' else 'daddr'} {cidr}"


def _match(rule: SecurityGroupRuleTO) -> list[str]:
    """The match expressions of one rule (one nft rule per peer address set)."""
    peers: list[str | None] = []
    if rule.cidr:
        peers.append(_addr(rule.cidr, rule.direction))
    if rule.remote_ips:
        family = "ip6" if ":" in rule.remote_ips[0] else "ip"
        side = "saddr" if rule.direction == "ingress" else "daddr"
        peers.append(f"{family} {side} {{ {', '.join(sorted(rule.remote_ips))} }}")
    if not peers:
        peers.append(None)
    proto = rule.protocol.lower()
    if proto in ("tcp", "udp"):
        ports = ""
        if rule.start_port is not None:
            end = rule.end_port if rule.end_port is not None else rule.start_port
            ports = f" {proto} dport {rule.start_port}" + (f"-{end}" if end != rule.start_port else "")
        l4 = f"meta l4proto {proto}{ports}"
    elif proto == "icmp":
        l4 = "meta l4proto { icmp, ipv6-icmp }"
    elif proto == "all":
        l4 = ""
    else:
        raise HostErrors.exc("1000", f"security group rule protocol {rule.protocol!r} is not tcp, udp, icmp or all")
    return [" ".join(p for p in (peer, l4) if p) for peer in peers]


def render_ruleset(vm_uuid: str, rules: Sequence[SecurityGroupRuleTO], conntrack: bool = False) -> str:
    """The nftables script that makes the VM's table exactly ``rules`` (empty: no table)."""
    name = table_name(vm_uuid)
    if not rules:
        return f"table bridge {name}\ndelete table bridge {name}\n"
    nics: dict[str, str] = {}
    for r in sorted(rules, key=lambda r: r.nic_uuid):
        nics.setdefault(r.nic_uuid, r.mac.lower())
    lines = [f"table bridge {name}", f"delete table bridge {name}", f"table bridge {name} {{"]
    dispatch_forward, dispatch_input, dispatch_output = [], [], []
    for i, (nic_uuid, mac) in enumerate(nics.items()):
        mine = [r for r in rules if r.nic_uuid == nic_uuid]
        ingress = [r for r in mine if r.direction == "ingress"]
        egress = [r for r in mine if r.direction == "egress"]
        lines.append(f"  chain ingress_{i} {{")
        lines.append(f"    # NIC {nic_uuid}")
        lines.append("    ether type arp accept")
        lines.append("    meta l4proto udp udp sport 67 udp dport 68 accept")
        lines.append("    ct state established,related accept" if conntrack
                     else "    meta l4proto tcp tcp flags & (syn | ack) == ack accept")
        for r in ingress:
            lines.extend(f"    {m} accept" for m in _match(r))
        lines.append("    drop")
        lines.append("  }")
        lines.append(f"  chain egress_{i} {{")
        if egress:
            lines.append("    ether type arp accept")
            lines.append("    meta l4proto udp udp sport 68 udp dport 67 accept")
            for r in egress:
                lines.extend(f"    {m} accept" for m in _match(r))
            lines.append("    drop")
        else:
            lines.append("    accept")
        lines.append("  }")
        dispatch_forward += [f"    ether daddr {mac} jump ingress_{i}", f"    ether saddr {mac} jump egress_{i}"]
        dispatch_input.append(f"    ether saddr {mac} jump egress_{i}")
        dispatch_output.append(f"    ether daddr {mac} jump ingress_{i}")
    for hook, dispatch in (("forward", dispatch_forward), ("input", dispatch_input), ("output", dispatch_output)):
        lines.append(f"  chain {hook} {{")
        lines.append(f"    type filter hook {hook} priority 0; policy accept;")
        lines.extend(dispatch)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


async def _nft(script: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec("nft", "-f", "-", stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise HostErrors.exc("1000", f"cannot run nft (install nftables): {exc}") from None
    out, err = await asyncio.wait_for(proc.communicate(script.encode()), 60)
    return proc.returncode or 0, (err or out).decode(errors="replace").strip()


_conntrack: bool | None = None


async def bridge_conntrack() -> bool:
    """Whether this kernel tracks connections in the bridge family (probed once)."""
    global _conntrack
    if _conntrack is None:
        probe = "table bridge zstack_sg_probe {\n chain c {\n  ct state established accept\n }\n}\n" \
                "delete table bridge zstack_sg_probe\n"
        rc, _ = await _nft(probe)
        _conntrack = rc == 0
    return _conntrack


class KVMSecurityGroupBackend(SecurityGroupBackend):
    """Applies each VM's rules on its host; remembers them to re-apply when a host reconnects."""

    hypervisor_type = "KVM"

    def __init__(self, node: Any = None) -> None:
        self._node = node
        self.rules: dict[tuple[str, str], list[SecurityGroupRuleTO]] = {}
        self.rulesets: dict[tuple[str, str], str] = {}
        """(host uuid, VM uuid) -> the rendered nftables script last applied (or, on test
        hosts, kept)."""

    def _uri(self, host: HostInventory) -> Any:
        from .libvirt_host import parse_uri

        return parse_uri(host.management_url)

    async def apply_rules(self, host: HostInventory, vm_uuid: str, rules: Sequence[SecurityGroupRuleTO]) -> None:
        uri = self._uri(host)
        key = (host.uuid, vm_uuid)
        if uri.is_test:
            script = render_ruleset(vm_uuid, rules)
        elif uri.is_local_qemu:
            script = render_ruleset(vm_uuid, rules, conntrack=await bridge_conntrack())
            rc, err = await _nft(script)
            if rc != 0:
                raise HostErrors.exc("1000", f"applying security group rules of VM {vm_uuid} on host {host.uuid} "
                                             f"failed: {err}")
        else:
            raise HostErrors.exc("1010", f"security groups on remote host {host.uuid} ({host.management_url}) need "
                                         f"an agent on that host; only the local qemu:///system is supported")
        if rules:
            self.rules[key] = list(rules)
            self.rulesets[key] = script
        else:
            self.rules.pop(key, None)
            self.rulesets.pop(key, None)

    async def cleanup(self, host: HostInventory, vm_uuid: str) -> None:
        await self.apply_rules(host, vm_uuid, [])

    async def host_connected(self, host: HostInventory) -> None:
        """Re-apply every VM's rules on a host that (re)connected: the host may have rebooted
        and lost its tables."""
        for (host_uuid, vm_uuid), rules in list(self.rules.items()):
            if host_uuid == host.uuid:
                await self.apply_rules(host, vm_uuid, rules)


def backend_of(node: Any) -> KVMSecurityGroupBackend | None:
    for b in node.extension("security_group_backends"):
        if isinstance(b, KVMSecurityGroupBackend):
            return b
    return None
