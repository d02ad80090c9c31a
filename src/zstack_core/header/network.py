"""Network contracts: L2/L3 networks, IP ranges, and security-group rules for backends."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class L2NetworkInventory:
    uuid: str
    name: str
    zone_uuid: str
    physical_interface: str
    type: str = "L2NoVlanNetwork"
    vlan: int | None = None
    attached_cluster_uuids: list[str] = attrs.field(factory=list)

    @property
    def bridge_name(self) -> str:
        """The Linux bridge that realizes this network on a host (as ZStack names it)."""
        return f"br_{self.physical_interface}" + (f"_{self.vlan}" if self.vlan is not None else "")


@attrs.frozen(kw_only=True)
class L3NetworkInventory:
    uuid: str
    name: str
    l2_network_uuid: str
    zone_uuid: str
    dns: list[str] = attrs.field(factory=list)
    dns_domain: str | None = None
    enable_dhcp: bool = True


@attrs.frozen(kw_only=True)
class IpRangeInventory:
    uuid: str
    l3_network_uuid: str
    start_ip: str
    end_ip: str
    netmask: str
    gateway: str
    network_cidr: str


@attrs.frozen(kw_only=True)
class SecurityGroupRuleTO:
    """One rule as a backend applies it to a VM NIC."""

    nic_uuid: str
    mac: str
    direction: str
    """``ingress`` or ``egress``."""
    protocol: str
    """``tcp``, ``udp``, ``icmp`` or ``all``."""
    start_port: int | None = None
    end_port: int | None = None
    cidr: str | None = None
    remote_ips: list[str] = attrs.field(factory=list)
