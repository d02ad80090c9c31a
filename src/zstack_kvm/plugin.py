"""Hook implementations of zstack-kvm (the seed's KVM beans, one hookimpl each)."""

from __future__ import annotations

from collections.abc import Sequence

from zstack_core import ErrorCodeSpace, ManagementNode, Service, hookimpl

HostErrors = ErrorCodeSpace(
    prefix="HOST",
    codes={
        "1000": "invalid host operation",
        "1001": "host is not connected",
        "1002": "duplicate host",
        "1003": "cluster not found",
        "1004": "not enough host capacity",
        "1005": "host is unreachable",
    },
)
VmErrors = ErrorCodeSpace(prefix="VM", codes={"1000": "invalid VM operation", "1001": "VM state does not allow this"})


class ComputeService(Service):
    """Zones, clusters, hosts and VM instances."""

    id = "compute"
    start_order = 50


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [HostErrors, VmErrors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [ComputeService()]
