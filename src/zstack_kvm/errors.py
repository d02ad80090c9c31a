"""The error codes compute owns: ``ZONE``, ``CLUSTER``, ``HOST`` and ``VM``.

``HOST.1003`` (cluster not found) and ``HOST.1005`` (host is unreachable) are the seed's
``HostApiInterceptor``/``KVMApiInterceptor`` refusals of ``AddKVMHost``.
"""

from __future__ import annotations

from zstack_core import ErrorCodeSpace

__all__ = ["ClusterErrors", "HostErrors", "VmErrors", "ZoneErrors"]

ZoneErrors = ErrorCodeSpace(
    prefix="ZONE",
    codes={
        "1000": "zone not found",
        "1001": "zone state does not allow this",
    },
)

ClusterErrors = ErrorCodeSpace(
    prefix="CLUSTER",
    codes={
        "1000": "cluster not found",
        "1001": "unsupported hypervisor type",
        "1002": "cluster state does not allow this",
    },
)

HostErrors = ErrorCodeSpace(
    prefix="HOST",
    codes={
        "1000": "invalid host operation",
        "1001": "host is not connected",
        "1002": "duplicate host",
        "1003": "cluster not found",
        "1004": "not enough host capacity",
        "1005": "host is unreachable",
        "1006": "invalid libvirt URI",
        "1007": "host not found",
        "1008": "libvirt call failed",
        "1009": "host state does not allow this",
        "1010": "not supported by the host's hypervisor",
    },
)

VmErrors = ErrorCodeSpace(
    prefix="VM",
    codes={
        "1000": "invalid VM operation",
        "1001": "VM state does not allow this",
        "1002": "VM not found",
        "1003": "instance offering not found",
        "1004": "hypervisor operation failed",
        "1005": "not supported by the host's hypervisor",
        "1006": "a service this request needs is not installed",
        "1007": "creating the VM failed",
        "1008": "stopping the VM failed",
    },
)
