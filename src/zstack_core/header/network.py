"""Network contracts: L2/L3 networks, IP ranges, and security-group rules for backends."""

from __future__ import annotations

import hashlib

import attrs

IFNAMSIZ = 15
"""The longest Linux interface name (IFNAMSIZ minus the terminating NUL)."""


def _ifname(natural: str, prefix: str, *parts: object) -> str:
    """``natural`` if Linux accepts it, else ``prefix`` + a digest of ``parts`` (stable, unique
    enough, and still recognisable by its prefix)."""
    if len(natural) <= IFNAMSIZ:
        return natural
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()
    return prefix + digest[: IFNAMSIZ - len(prefix)]


@attrs.frozen(kw_only=True)
class L2NetworkInventory:
    """A layer-2 broadcast domain: a Linux bridge on ``physical_interface`` (``L2NoVlanNetwork``)
    or on its VLAN sub-interface ``physical_interface.vlan`` (``L2VlanNetwork``)."""

    uuid: str
    name: str
    zone_uuid: str
    physical_interface: str
    type: str = "L2NoVlanNetwork"
    vlan: int | None = None
    description: str = ""
    attached_cluster_uuids: list[str] = attrs.field(factory=list)

    @property
    def bridge_name(self) -> str:
        """The Linux bridge that realizes this network on a host (as ZStack names it,
        ``br_eth0`` / ``br_eth0_100``; a digest-based ``br_…`` name when that is too long)."""
        natural = f"br_{self.physical_interface}" + (f"_{self.vlan}" if self.vlan is not None else "")
        return _ifname(natural, "br_", self.physical_interface, self.vlan)

    @property
    def vlan_interface(self) -> str | None:
        """The VLAN sub-interface enslaved to the bridge (``eth0.100``), None without a VLAN."""
        if self.vlan is None:
            return None
        return _ifname(f"{self.physical_interface}.{self.vlan}", "vl_", self.physical_interface, self.vlan)


@attrs.frozen(kw_only=True)
class IpRangeInventory:
    """Addresses ``start_ip``..``end_ip`` (inclusive) of an L3 network that IPAM hands out."""

    uuid: str
    l3_network_uuid: str
    start_ip: str
    end_ip: str
    netmask: str
    gateway: str
    network_cidr: str
    name: str = ""
    description: str = ""
    ip_version: int = 4


@attrs.frozen(kw_only=True)
class L3NetworkInventory:
    """A subnet on an L2 network: its IP ranges share one CIDR and gateway; ``ip_allocation_strategy``
    names the registered strategy IPAM uses (``FirstAvailable``, ``Random``)."""

    uuid: str
    name: str
    l2_network_uuid: str
    zone_uuid: str
    dns: list[str] = attrs.field(factory=list)
    dns_domain: str | None = None
    enable_dhcp: bool = True
    description: str = ""
    type: str = "L3BasicNetwork"
    state: str = "Enabled"
    ip_allocation_strategy: str = "FirstAvailable"
    ip_ranges: list[IpRangeInventory] = attrs.field(factory=list)


@attrs.frozen(kw_only=True)
class SecurityGroupRuleTO:
    """One rule as a backend applies it to a VM NIC.

    What a backend gets for a VM (``SecurityGroupBackend.apply_rules``) is the complete list for
    its NICs that belong to at least one security group, and the semantics are:

    * a NIC that appears in the list is *protected*: traffic in either direction is dropped
      unless a rule of that direction allows it (replies to allowed traffic are allowed: the
      filter is stateful; ARP and the NIC's own DHCP exchange are always allowed);
    * the network service adds an explicit egress ``all`` to ``0.0.0.0/0`` for a protected NIC
      whose groups have no egress rule, so "egress open unless restricted" (ZStack's default)
      needs no special case, and every protected NIC appears at least once;
    * a rule matches the remote address against ``cidr`` if set, else against ``remote_ips``
      (the addresses of the members of a remote security group; an empty list matches nothing);
    * ``start_port``/``end_port`` are set for ``tcp``/``udp`` only.

    NICs not in the list are not filtered. An empty list means none of the VM's NICs is protected:
    remove whatever was applied (as ``cleanup`` does).
    """

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
    ip: str | None = None
    """The NIC's own address (backends may use it to stop address spoofing)."""
    security_group_uuid: str | None = None
    """The group the rule comes from (None for the implicit egress rule), for backends' comments."""
