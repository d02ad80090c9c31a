"""The error codes zstack-network owns: prefixes ``L2``, ``L3`` and ``SG``.

Input that is malformed (not an address, not a CIDR, a missing field) is ``SYS.1007`` naming the
field; input that is well-formed but not allowed (overlapping ranges, a VLAN id out of range, an
impossible port range) is one of these.
"""

from __future__ import annotations

from zstack_core.errors import ErrorCodeSpace

__all__ = ["L2Errors", "L3Errors", "SecurityGroupErrors"]

L2Errors = ErrorCodeSpace(
    prefix="L2",
    codes={
        "1000": "invalid L2 network operation",
        "1001": "invalid VLAN id",
        "1002": "L2 network conflicts with another on the same bridge",
        "1003": "realizing the L2 network on a host failed",
        "1004": "L2 network is in use",
        "1005": "the network service cannot prepare this kind of host",
        "1006": "invalid physical interface",
    },
)

L3Errors = ErrorCodeSpace(
    prefix="L3",
    codes={
        "1000": "invalid L3 network operation",
        "1001": "IP range overlaps another range",
        "1002": "no free IP address",
        "1003": "IP address is not in the L3 network",
        "1004": "IP address is already in use",
        "1005": "invalid IP range",
        "1006": "IP range has addresses in use",
        "1007": "L3 network is in use",
        "1008": "IP range does not match the L3 network's subnet",
        "1009": "unknown IP allocation strategy",
        "1010": "preparing DHCP on a host failed",
        "1011": "L3 network has no IP range",
    },
)

SecurityGroupErrors = ErrorCodeSpace(
    prefix="SG",
    codes={
        "1000": "invalid security group rule",
        "1001": "duplicate security group rule",
        "1002": "the NIC's L3 network is not attached to the security group",
        "1003": "no security-group backend for the hypervisor type",
        "1004": "applying security-group rules on a host failed",
    },
)
