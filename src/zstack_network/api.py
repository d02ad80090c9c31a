"""The APIs of zstack-network: messages, replies and their registrations.

Names and fields follow ZStack's (``CreateL2VlanNetwork``, ``AddIpRangeByNetworkCidr``,
``AddSecurityGroupRule`` with a list of rules...). Handlers live beside the logic they drive
(:mod:`.l2`, :mod:`.l3`, :mod:`.security_group`); this module is the surface.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from zstack_core.api import ApiRegistration
from zstack_core.header import IpRangeInventory, L2NetworkInventory, L3NetworkInventory
from zstack_core.messages import APIEvent, APIMessage, APIReply

from .inventories import (
    FreeIpInventory,
    ReservedIpRangeInventory,
    SecurityGroupInventory,
    SecurityGroupRuleInventory,
    VmNicSecurityGroupRefInventory,
)

SERVICE_ID = "network"

# -- L2 networks ------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateL2NoVlanNetworkMsg(APIMessage):
    """An L2 network bridged straight onto ``physical_interface`` of each host."""

    SERVICE_ID = SERVICE_ID
    name: str
    zone_uuid: str
    physical_interface: str
    description: str = ""
    resource_uuid: str | None = None


@attrs.define(kw_only=True)
class APICreateL2VlanNetworkMsg(APIMessage):
    """An L2 network on VLAN ``vlan`` (1..4094) of ``physical_interface``."""

    SERVICE_ID = SERVICE_ID
    name: str
    zone_uuid: str
    physical_interface: str
    vlan: int
    description: str = ""
    resource_uuid: str | None = None


@attrs.define(kw_only=True)
class APIDeleteL2NetworkMsg(APIMessage):
    """Delete an L2 network that has no L3 networks; it is removed from every host first."""

    SERVICE_ID = SERVICE_ID
    uuid: str


@attrs.define(kw_only=True)
class APIAttachL2NetworkToClusterMsg(APIMessage):
    """Attach to a cluster of the same zone and realize the network on its connected hosts."""

    SERVICE_ID = SERVICE_ID
    l2_network_uuid: str
    cluster_uuid: str


@attrs.define(kw_only=True)
class APIDetachL2NetworkFromClusterMsg(APIMessage):
    """Detach from a cluster (refused while its VMs have NICs on the network) and remove the
    network from the cluster's hosts."""

    SERVICE_ID = SERVICE_ID
    l2_network_uuid: str
    cluster_uuid: str


@attrs.define(kw_only=True)
class APIL2NetworkEvent(APIEvent):
    inventory: L2NetworkInventory | None = None


# -- L3 networks, IP ranges -------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateL3NetworkMsg(APIMessage):
    """A subnet on an L2 network. The IP allocation strategy is ``ip_allocation_strategy`` if
    given, else the system tag ``ipAllocationStrategy::<name>``, else ``FirstAvailable``."""

    SERVICE_ID = SERVICE_ID
    name: str
    l2_network_uuid: str
    description: str = ""
    dns: list[str] = attrs.field(factory=list)
    dns_domain: str | None = None
    enable_dhcp: bool = True
    ip_allocation_strategy: str | None = None
    type: str = "L3BasicNetwork"
    resource_uuid: str | None = None


@attrs.define(kw_only=True)
class APIDeleteL3NetworkMsg(APIMessage):
    """Delete an L3 network that no VM NIC uses, with its IP ranges and DHCP servers."""

    SERVICE_ID = SERVICE_ID
    uuid: str


@attrs.define(kw_only=True)
class APIAddDnsToL3NetworkMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str
    dns: str


@attrs.define(kw_only=True)
class APIRemoveDnsFromL3NetworkMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str
    dns: str


@attrs.define(kw_only=True)
class APIL3NetworkEvent(APIEvent):
    inventory: L3NetworkInventory | None = None


@attrs.define(kw_only=True)
class APIAddIpRangeMsg(APIMessage):
    """Addresses ``start_ip``..``end_ip`` of the subnet given by ``netmask``; the gateway must
    be in the subnet and outside the range. Every range of an L3 network shares one subnet and
    gateway, and ranges of the L3 networks of one L2 network never overlap."""

    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str
    name: str = ""
    start_ip: str
    end_ip: str
    netmask: str
    gateway: str
    description: str = ""
    resource_uuid: str | None = None


@attrs.define(kw_only=True)
class APIAddIpRangeByNetworkCidrMsg(APIMessage):
    """Every host address of ``network_cidr`` but the gateway (default: the first host)."""

    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str
    name: str = ""
    network_cidr: str
    gateway: str | None = None
    description: str = ""
    resource_uuid: str | None = None


@attrs.define(kw_only=True)
class APIDeleteIpRangeMsg(APIMessage):
    """Delete a range none of whose addresses is in use (refused with ``L3.1006`` otherwise)."""

    SERVICE_ID = SERVICE_ID
    uuid: str


@attrs.define(kw_only=True)
class APIIpRangeEvent(APIEvent):
    inventory: IpRangeInventory | None = None


@attrs.define(kw_only=True)
class APIAddReservedIpRangeMsg(APIMessage):
    """Addresses IPAM must never hand out (they may lie outside today's ranges)."""

    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str
    start_ip: str
    end_ip: str
    description: str = ""


@attrs.define(kw_only=True)
class APIDeleteReservedIpRangeMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    uuid: str


@attrs.define(kw_only=True)
class APIReservedIpRangeEvent(APIEvent):
    inventory: ReservedIpRangeInventory | None = None


@attrs.define(kw_only=True)
class APIGetFreeIpMsg(APIMessage):
    """Up to ``limit`` free addresses of an L3 network or one of its ranges, ascending from
    ``start`` (an address; default the beginning)."""

    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str | None = None
    ip_range_uuid: str | None = None
    start: str | None = None
    limit: int = 100


@attrs.define(kw_only=True)
class APIGetFreeIpReply(APIReply):
    inventories: list[FreeIpInventory] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class APICheckIpAvailabilityMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    l3_network_uuid: str
    ip: str


@attrs.define(kw_only=True)
class APICheckIpAvailabilityReply(APIReply):
    available: bool = False
    reason: str = ""
    """Why not: ``in use``, ``reserved``, ``gateway``, ``not in any IP range``."""


# -- security groups --------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateSecurityGroupMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    name: str
    description: str = ""
    resource_uuid: str | None = None


@attrs.define(kw_only=True)
class APIDeleteSecurityGroupMsg(APIMessage):
    """Delete a group: its NICs leave it, rules of other groups naming it as remote go, and the
    affected VMs get their new rules."""

    SERVICE_ID = SERVICE_ID
    uuid: str


@attrs.define(kw_only=True)
class SecurityGroupRuleAO:
    """A rule to add (ZStack's ``SecurityGroupRuleAO``). ``type`` is ``ingress``/``egress`` and
    ``protocol`` ``tcp``/``udp``/``icmp``/``all`` (any case). Ports only for tcp/udp, 1..65535
    with start <= end. The peer is ``allowed_cidr`` or the members of ``remote_security_group_uuid``
    (not both; neither means ``0.0.0.0/0``)."""

    type: str
    protocol: str
    start_port: int | None = None
    end_port: int | None = None
    allowed_cidr: str | None = None
    remote_security_group_uuid: str | None = None


@attrs.define(kw_only=True)
class APIAddSecurityGroupRuleMsg(APIMessage):
    """Add rules to a group: all of them or, if one is invalid or a duplicate, none."""

    SERVICE_ID = SERVICE_ID
    security_group_uuid: str
    rules: list[SecurityGroupRuleAO]


@attrs.define(kw_only=True)
class APIDeleteSecurityGroupRuleMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    rule_uuids: list[str]


@attrs.define(kw_only=True)
class APIAttachSecurityGroupToL3NetworkMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    security_group_uuid: str
    l3_network_uuid: str


@attrs.define(kw_only=True)
class APIDetachSecurityGroupFromL3NetworkMsg(APIMessage):
    """Detach; NICs of that L3 network leave the group."""

    SERVICE_ID = SERVICE_ID
    security_group_uuid: str
    l3_network_uuid: str


@attrs.define(kw_only=True)
class APIAddVmNicToSecurityGroupMsg(APIMessage):
    """Put NICs in a group; each NIC's L3 network must be attached to the group."""

    SERVICE_ID = SERVICE_ID
    security_group_uuid: str
    vm_nic_uuids: list[str]


@attrs.define(kw_only=True)
class APIDeleteVmNicFromSecurityGroupMsg(APIMessage):
    SERVICE_ID = SERVICE_ID
    security_group_uuid: str
    vm_nic_uuids: list[str]


@attrs.define(kw_only=True)
class APISecurityGroupEvent(APIEvent):
    inventory: SecurityGroupInventory | None = None


@attrs.define(kw_only=True)
class APIVmNicSecurityGroupEvent(APIEvent):
    inventories: list[VmNicSecurityGroupRefInventory] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class APISecurityGroupRulesEvent(APIEvent):
    inventories: list[SecurityGroupRuleInventory] = attrs.field(factory=list)


def registrations() -> Sequence[ApiRegistration]:
    """Every API of the network service, with its REST route and the resource it acts on."""
    r = ApiRegistration
    return [
        # L2 networks and IP ranges are infrastructure: admin only, as in ZStack.
        r(message=APICreateL2NoVlanNetworkMsg, route=("POST", "/v1/l2-networks/no-vlan"), resource="L2Network",
          admin_only=True),
        r(message=APICreateL2VlanNetworkMsg, route=("POST", "/v1/l2-networks/vlan"), resource="L2Network", admin_only=True),
        r(message=APIDeleteL2NetworkMsg, route=("DELETE", "/v1/l2-networks/{uuid}"), resource="L2Network", admin_only=True),
        r(message=APIAttachL2NetworkToClusterMsg, route=("POST", "/v1/l2-networks/{l2NetworkUuid}/clusters/{clusterUuid}"),
          resource="L2Network", admin_only=True),
        r(message=APIDetachL2NetworkFromClusterMsg,
          route=("DELETE", "/v1/l2-networks/{l2NetworkUuid}/clusters/{clusterUuid}"), resource="L2Network",
          admin_only=True),
        r(message=APICreateL3NetworkMsg, route=("POST", "/v1/l3-networks"), resource="L3Network"),
        r(message=APIDeleteL3NetworkMsg, route=("DELETE", "/v1/l3-networks/{uuid}"), resource="L3Network"),
        r(message=APIAddDnsToL3NetworkMsg, route=("POST", "/v1/l3-networks/{l3NetworkUuid}/dns"), resource="L3Network"),
        r(message=APIRemoveDnsFromL3NetworkMsg, route=("DELETE", "/v1/l3-networks/{l3NetworkUuid}/dns/{dns}"),
          resource="L3Network"),
        r(message=APIAddIpRangeMsg, route=("POST", "/v1/l3-networks/{l3NetworkUuid}/ip-ranges"), resource="IpRange",
          admin_only=True),
        r(message=APIAddIpRangeByNetworkCidrMsg, route=("POST", "/v1/l3-networks/{l3NetworkUuid}/ip-ranges/by-cidr"),
          resource="IpRange", admin_only=True),
        r(message=APIDeleteIpRangeMsg, route=("DELETE", "/v1/l3-networks/ip-ranges/{uuid}"), resource="IpRange",
          admin_only=True),
        r(message=APIAddReservedIpRangeMsg, route=("POST", "/v1/l3-networks/{l3NetworkUuid}/reserved-ip-ranges"),
          resource="ReservedIpRange"),
        r(message=APIDeleteReservedIpRangeMsg, route=("DELETE", "/v1/l3-networks/reserved-ip-ranges/{uuid}"),
          resource="ReservedIpRange"),
        r(message=APIGetFreeIpMsg, route=("GET", "/v1/l3-networks/free-ips"), resource="L3Network",
          reply=APIGetFreeIpReply),
        r(message=APICheckIpAvailabilityMsg, route=("GET", "/v1/l3-networks/{l3NetworkUuid}/ip/{ip}/availability"),
          resource="L3Network", reply=APICheckIpAvailabilityReply),
        r(message=APICreateSecurityGroupMsg, route=("POST", "/v1/security-groups"), resource="SecurityGroup"),
        r(message=APIDeleteSecurityGroupMsg, route=("DELETE", "/v1/security-groups/{uuid}"), resource="SecurityGroup"),
        r(message=APIAddSecurityGroupRuleMsg, route=("POST", "/v1/security-groups/{securityGroupUuid}/rules"),
          resource="SecurityGroup"),
        r(message=APIDeleteSecurityGroupRuleMsg, route=("DELETE", "/v1/security-groups/rules"), resource="SecurityGroup"),
        r(message=APIAttachSecurityGroupToL3NetworkMsg,
          route=("POST", "/v1/security-groups/{securityGroupUuid}/l3-networks/{l3NetworkUuid}"), resource="SecurityGroup"),
        r(message=APIDetachSecurityGroupFromL3NetworkMsg,
          route=("DELETE", "/v1/security-groups/{securityGroupUuid}/l3-networks/{l3NetworkUuid}"),
          resource="SecurityGroup"),
        r(message=APIAddVmNicToSecurityGroupMsg, route=("POST", "/v1/security-groups/{securityGroupUuid}/vm-instances/nics"),
          resource="SecurityGroup"),
        r(message=APIDeleteVmNicFromSecurityGroupMsg,
          route=("DELETE", "/v1/security-groups/{securityGroupUuid}/vm-instances/nics"), resource="SecurityGroup"),
    ]
