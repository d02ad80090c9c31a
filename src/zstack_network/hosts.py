"""How the network service reaches hosts and compute's records, without importing compute.

* Work on a host goes through ``HostRunMsg`` (``zstack_core.header.messages``): compute owns the
  one libvirt connection of each host and runs our function with it in that host's worker
  thread, so libvirt calls and the ``ip`` commands below never block the event loop.
* Hosts, clusters and VMs are read through the generic query (``node.query.find("Host", ...)``),
  the contract every service registers its inventories with. When no plugin provides those
  resources (zstack-network installed alone) there are no hosts and nothing to realize.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from zstack_core.errors import ErrorCode, ZStackError, operr
from zstack_core.header import ClusterInventory, HostInventory, VmInstanceInventory
from zstack_core.header.messages import HostRunMsg, HostRunReply

__all__ = [
    "HOST_RUN_TIMEOUT",
    "clusters",
    "connection_kind",
    "host",
    "hosts_of_clusters",
    "interface",
    "ip",
    "run_on_host",
    "vms",
    "zone_exists",
]

log = logging.getLogger("zstack.network.hosts")
T = TypeVar("T")

HOST_RUN_TIMEOUT = 120.0


async def run_on_host(node: Any, host_uuid: str, fn: Callable[[Any], T], failure: ErrorCode) -> T:
    """Run ``fn(libvirt_connection)`` on ``host_uuid`` through compute. On failure raise
    ``failure`` (the caller's code saying what was being done) with compute's error as cause."""
    reply = await node.bus.call(HostRunMsg(host_uuid=host_uuid, fn=fn), timeout=HOST_RUN_TIMEOUT)
    if reply.error is not None:
        raise ZStackError(attrs.evolve(failure, cause=reply.error))
    assert isinstance(reply, HostRunReply)
    return reply.result  # type: ignore[no-any-return]


def _queryable(node: Any, resource: str) -> bool:
    return resource in node.query.resources


async def hosts_of_clusters(node: Any, cluster_uuids: Sequence[str], connected_only: bool = True) -> list[HostInventory]:
    """The hosts of ``cluster_uuids`` (only Connected ones unless told otherwise)."""
    if not cluster_uuids or not _queryable(node, "Host"):
        return []
    conditions: list[tuple[str, str, Any]] = [("clusterUuid", "in", list(cluster_uuids))]
    if connected_only:
        conditions.append(("status", "=", "Connected"))
    return list(await node.query.find("Host", conditions, limit=None))


async def host(node: Any, host_uuid: str) -> HostInventory | None:
    if not _queryable(node, "Host"):
        return None
    found = await node.query.find("Host", [("uuid", "=", host_uuid)])
    return found[0] if found else None


async def clusters(node: Any, cluster_uuids: Sequence[str]) -> dict[str, ClusterInventory] | None:
    """Clusters by UUID; None when no plugin provides clusters (then nothing can be checked)."""
    if not _queryable(node, "Cluster"):
        return None
    if not cluster_uuids:
        return {}
    return {c.uuid: c for c in await node.query.find("Cluster", [("uuid", "in", list(cluster_uuids))], limit=None)}


async def vms(node: Any, vm_uuids: Sequence[str]) -> dict[str, VmInstanceInventory]:
    """VM instances by UUID (those compute knows)."""
    if not vm_uuids or not _queryable(node, "VmInstance"):
        return {}
    found = await node.query.find("VmInstance", [("uuid", "in", list(vm_uuids))], limit=None)
    return {v.uuid: v for v in found}


async def zone_exists(node: Any, zone_uuid: str) -> bool | None:
    """Whether the zone exists; None when no plugin provides zones."""
    if not _queryable(node, "Zone"):
        return None
    return bool(await node.query.find("Zone", [("uuid", "=", zone_uuid)]))


# -- on the host (these run in compute's worker thread for the host) ---------------------------


def connection_kind(conn: Any) -> str:
    """``test`` for libvirt's test driver, ``local`` for a privileged QEMU driver on this
    machine, ``remote`` otherwise. Only ``local`` hosts get Linux bridges from us: the ``ip``
    commands run where this process runs."""
    uri = conn.getURI()
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "test":
        return "test"
    if parsed.scheme == "qemu" and not parsed.hostname and parsed.path == "/system":
        return "local"
    return "remote"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip args...`` (iproute2); raise ``NETHOST.1000`` with its stderr on failure."""
    cmd = ["ip", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ZStackError(operr(f"`{' '.join(cmd)}` failed: {result.stderr.strip() or result.returncode}"))
    return result


def interface(name: str) -> dict[str, Any] | None:
    """``ip -j -d addr show dev name`` as a dict, or None when there is no such interface."""
    result = ip("-j", "-d", "addr", "show", "dev", name, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    data = json.loads(result.stdout)
    return data[0] if data else None
