"""Hook implementations of zstack-network."""

from __future__ import annotations

from collections.abc import Sequence

from zstack_core import ErrorCodeSpace, ManagementNode, Service, hookimpl

L3Errors = ErrorCodeSpace(
    prefix="L3",
    codes={
        "1000": "invalid L3 network operation",
        "1001": "IP range overlaps another range",
        "1002": "no free IP address",
        "1003": "IP address is not in the L3 network",
        "1004": "IP address is already in use",
    },
)
L2Errors = ErrorCodeSpace(prefix="L2", codes={"1000": "invalid L2 network operation", "1001": "invalid VLAN id"})
SecurityGroupErrors = ErrorCodeSpace(prefix="SG", codes={"1000": "invalid security group rule"})


class NetworkService(Service):
    """L2/L3 networks and their IP space."""

    id = "network"
    start_order = 40


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [L2Errors, L3Errors, SecurityGroupErrors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [NetworkService()]
