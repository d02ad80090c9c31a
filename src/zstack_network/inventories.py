"""Inventories only the network service's own APIs return.

The ones other services read (L2/L3 networks, IP ranges, NICs, rule transfer objects) live in
:mod:`zstack_core.header`.
"""

from __future__ import annotations

import attrs

__all__ = [
    "FreeIpInventory",
    "ReservedIpRangeInventory",
    "SecurityGroupInventory",
    "SecurityGroupRuleInventory",
    "VmNicSecurityGroupRefInventory",
]


@attrs.frozen(kw_only=True)
class ReservedIpRangeInventory:
    """Addresses of an L3 network IPAM never hands out (routers, appliances, ...)."""

    uuid: str
    l3_network_uuid: str
    start_ip: str
    end_ip: str
    description: str = ""


@attrs.frozen(kw_only=True)
class FreeIpInventory:
    ip: str
    ip_range_uuid: str
    netmask: str
    gateway: str


@attrs.frozen(kw_only=True)
class SecurityGroupRuleInventory:
    uuid: str
    security_group_uuid: str
    type: str
    """``ingress`` or ``egress``."""
    protocol: str
    """``tcp``, ``udp``, ``icmp`` or ``all``."""
    start_port: int | None = None
    end_port: int | None = None
    allowed_cidr: str | None = None
    remote_security_group_uuid: str | None = None


@attrs.frozen(kw_only=True)
class SecurityGroupInventory:
    uuid: str
    name: str
    description: str = ""
    state: str = "Enabled"
    rules: list[SecurityGroupRuleInventory] = attrs.field(factory=list)
    attached_l3_network_uuids: list[str] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class VmNicSecurityGroupRefInventory:
    uuid: str
    vm_nic_uuid: str
    security_group_uuid: str
    vm_instance_uuid: str
