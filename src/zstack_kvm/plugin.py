"""Hook implementations of zstack-kvm: what the plugin registers, and the seed's KVM beans.

Registration hooks come first. Then the beans of the seed's ``kvm`` Spring file, one hookimpl
each, named in a comment so the seed can be read line by line against this module:
``KvmHostReserveExtension``, ``KVMHostFactory``, ``KVMSecurityGroupBackend``,
``KVMConsoleHypervisorBackend`` and ``KVMApiInterceptor``.

Registration hooks are called synchronously while one node starts, ``zstack_services`` first,
so the node it passes is the node the later registration hooks belong to (``_starting``).
Extension points find their node with :func:`zstack_kvm.service.compute_of`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from zstack_core import ApiInterceptor, ApiRegistration, ErrorCodeSpace, FlowContribution, ManagementNode, Service, hookimpl
from zstack_core.check import ConsistencyCheck
from zstack_core.db import ModelRegistration
from zstack_core.globalconfig import GlobalConfig
from zstack_core.header import (
    CascadeAction,
    ClusterInventory,
    HostConnectFlows,
    HostInventory,
    HostReservedCapacity,
    InstanceOfferingInventory,
    VmCreateFlows,
    VmInstanceInventory,
    VmReleaseFlows,
    ZoneInventory,
)
from zstack_core.header.backends import ConsoleBackend, HypervisorFactory, SecurityGroupBackend
from zstack_core.query import QueryableResource
from zstack_core.tags import PatternedSystemTag

from . import api
from .cascade import delete_children
from .consistency import CHECKS as CONSISTENCY_CHECKS
from .configs import CONFIGS, CPU_OVER_PROVISIONING, HOST_PING_INTERVAL, RESERVED_MEMORY, SYSTEM_TAGS, VM_SYNC_INTERVAL
from .console import KVMConsoleHypervisorBackend
from .errors import ClusterErrors, HostErrors, VmErrors, ZoneErrors
from .host_flows import CapacityFlow, CollectFactsFlow, ConnectFlow, refresh_capacity
from .interceptors import HostApiInterceptor, KVMApiInterceptor, VmApiInterceptor
from .models import MODELS, ClusterVO, HostVO, InstanceOfferingVO, VmInstanceVO, ZoneVO
from .security_group import KVMSecurityGroupBackend, backend_of
from .service import ComputeService, compute_of
from .vm import attach_children_sync
from .vm_flows import (
    AllocateHostFlow,
    CreateOnHypervisorFlow,
    DeleteOnHypervisorFlow,
    InstantiatePostFlow,
    ReturnCapacityFlow,
)

log = logging.getLogger("zstack.kvm")

_starting: ManagementNode | None = None
"""The node whose registration hooks are being collected (set by ``zstack_services``)."""

# -- registration -----------------------------------------------------------------------------


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [ZoneErrors, ClusterErrors, HostErrors, VmErrors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    global _starting
    _starting = node
    return [ComputeService()]


@hookimpl
def zstack_models() -> Sequence[ModelRegistration]:
    return [ModelRegistration(name="kvm", models=MODELS)]


@hookimpl
def zstack_global_configs() -> Sequence[GlobalConfig]:
    return list(CONFIGS)


@hookimpl
def zstack_system_tags() -> Sequence[PatternedSystemTag]:
    return list(SYSTEM_TAGS)


def _reg(message: type[Any], method: str, path: str, resource: str, admin: bool = False,
         interceptors: Sequence[ApiInterceptor] = ()) -> ApiRegistration:
    return ApiRegistration(message=message, route=(method, path), resource=resource, admin_only=admin,
                           interceptors=interceptors)


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    zone, zone_do = "/v1/zones", "/v1/zones/{uuid}"
    cluster, cluster_do = "/v1/clusters", "/v1/clusters/{uuid}"
    offering, offering_do = "/v1/instance-offerings", "/v1/instance-offerings/{uuid}"
    host_do = "/v1/hosts/{uuid}"
    vm, vm_do = "/v1/vm-instances", "/v1/vm-instances/{uuid}"
    return [
        _reg(api.APICreateZoneMsg, "POST", zone, "Zone", admin=True),
        _reg(api.APIUpdateZoneMsg, "PUT", zone_do + "/actions", "Zone", admin=True),
        _reg(api.APIChangeZoneStateMsg, "PUT", zone_do + "/actions", "Zone", admin=True),
        _reg(api.APIDeleteZoneMsg, "DELETE", zone_do, "Zone", admin=True),
        _reg(api.APICreateClusterMsg, "POST", cluster, "Cluster", admin=True),
        _reg(api.APIUpdateClusterMsg, "PUT", cluster_do + "/actions", "Cluster", admin=True),
        _reg(api.APIChangeClusterStateMsg, "PUT", cluster_do + "/actions", "Cluster", admin=True),
        _reg(api.APIDeleteClusterMsg, "DELETE", cluster_do, "Cluster", admin=True),
        _reg(api.APICreateInstanceOfferingMsg, "POST", offering, "InstanceOffering", admin=True),
        _reg(api.APIUpdateInstanceOfferingMsg, "PUT", offering_do + "/actions", "InstanceOffering", admin=True),
        _reg(api.APIChangeInstanceOfferingStateMsg, "PUT", offering_do + "/actions", "InstanceOffering", admin=True),
        _reg(api.APIDeleteInstanceOfferingMsg, "DELETE", offering_do, "InstanceOffering", admin=True),
        # The seed's <message>APIAddKVMHostMsg: HostApiInterceptor, then KVMApiInterceptor
        # (both global interceptors, ordered; see interceptors.py).
        _reg(api.APIAddKVMHostMsg, "POST", "/v1/hosts/kvm", "Host", admin=True),
        _reg(api.APIUpdateHostMsg, "PUT", host_do + "/actions", "Host", admin=True),
        _reg(api.APIChangeHostStateMsg, "PUT", host_do + "/actions", "Host", admin=True),
        _reg(api.APIReconnectHostMsg, "PUT", host_do + "/actions", "Host", admin=True),
        _reg(api.APIDeleteHostMsg, "DELETE", host_do, "Host", admin=True),
        _reg(api.APICreateVmInstanceMsg, "POST", vm, "VmInstance", interceptors=[VmApiInterceptor()]),
        _reg(api.APIUpdateVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIStartVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIStopVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIRebootVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIPauseVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIResumeVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIDestroyVmInstanceMsg, "DELETE", vm_do, "VmInstance"),
        _reg(api.APIRecoverVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIExpungeVmInstanceMsg, "PUT", vm_do + "/actions", "VmInstance"),
        _reg(api.APIMigrateVmMsg, "PUT", "/v1/vm-instances/{vmInstanceUuid}/actions", "VmInstance", admin=True),
        _reg(api.APIGetVmConsoleAddressMsg, "GET", vm_do + "/console-addresses", "VmInstance"),
        _reg(api.APIAttachL3NetworkToVmMsg, "POST", "/v1/vm-instances/{vmInstanceUuid}/l3-networks/{l3NetworkUuid}",
             "VmInstance"),
        _reg(api.APIDetachL3NetworkFromVmMsg, "DELETE", "/v1/vm-instances/nics/{vmNicUuid}", "VmInstance"),
    ]


@hookimpl
def zstack_queryable_resources() -> Sequence[QueryableResource]:
    node = _starting

    def vms(rows: list[Any]) -> list[Any]:
        return attach_children_sync(node, [r.to_inventory() for r in rows])

    return [
        QueryableResource(name="Zone", model=ZoneVO, inventory=ZoneInventory),
        QueryableResource(name="Cluster", model=ClusterVO, inventory=ClusterInventory),
        QueryableResource(name="Host", model=HostVO, inventory=HostInventory),
        QueryableResource(name="InstanceOffering", model=InstanceOfferingVO, inventory=InstanceOfferingInventory),
        QueryableResource(name="VmInstance", model=VmInstanceVO, inventory=VmInstanceInventory, to_inventories=vms),
    ]


@hookimpl
def zstack_consistency_checks() -> Sequence[ConsistencyCheck]:
    """Domains against VM rows, host capacity against VMs (see consistency.py)."""
    return list(CONSISTENCY_CHECKS)


@hookimpl
def zstack_flows() -> Sequence[FlowContribution]:
    host, create, release = HostConnectFlows, VmCreateFlows, VmReleaseFlows
    return [
        FlowContribution(chain=host.CHAIN, flow=ConnectFlow(), order=host.CONNECT),
        FlowContribution(chain=host.CHAIN, flow=CollectFactsFlow(), order=host.COLLECT_FACTS),
        FlowContribution(chain=host.CHAIN, flow=CapacityFlow(), order=host.CAPACITY),
        FlowContribution(chain=create.CHAIN, flow=AllocateHostFlow(), order=create.ALLOCATE_HOST),
        FlowContribution(chain=create.CHAIN, flow=CreateOnHypervisorFlow(), order=create.CREATE_ON_HYPERVISOR),
        FlowContribution(chain=create.CHAIN, flow=InstantiatePostFlow(), order=create.INSTANTIATE_POST),
        FlowContribution(chain=release.CHAIN, flow=DeleteOnHypervisorFlow(), order=release.DELETE_ON_HYPERVISOR),
        FlowContribution(chain=release.CHAIN, flow=ReturnCapacityFlow(), order=release.RETURN_CAPACITY),
    ]


@hookimpl
def zstack_cascade(action: CascadeAction) -> Any:
    """Deleting a zone, cluster or host: compute's children go too (see cascade.py)."""
    return delete_children(compute_of(), action)


@hookimpl
def zstack_global_config_changed(category: str, name: str, resource_uuid: str | None) -> Any:
    """``kvm/reservedMemory`` or the CPU ratio changed (globally or for one host, cluster or
    zone): recompute the capacity of the hosts it applies to. A new ping or sync interval
    takes effect at once instead of after the old interval."""
    if category != "kvm":
        return None
    compute = compute_of()
    if name == HOST_PING_INTERVAL.name:
        compute.hosts.wake.set()
    if name == VM_SYNC_INTERVAL.name:
        compute.sync.wake.set()
    if name not in (RESERVED_MEMORY.name, CPU_OVER_PROVISIONING.name):
        return None

    async def recompute() -> None:
        node = compute.node
        q = HostVO.select(HostVO.uuid)
        if resource_uuid is not None:
            q = q.where((HostVO.uuid == resource_uuid) | (HostVO.cluster_uuid == resource_uuid)
                        | (HostVO.zone_uuid == resource_uuid))
        for host_uuid in await node.db.run(lambda: [h.uuid for h in q]):
            await refresh_capacity(node, host_uuid)

    return recompute()


# -- the seed's beans -------------------------------------------------------------------------

# KvmHostReserveExtension: Component, HostReservedCapacityExtensionPoint


@hookimpl
def zstack_host_reserved_capacity(host: HostInventory) -> HostReservedCapacity | None:
    """``kvm/reservedMemory`` for the host, read through host -> cluster -> zone -> global."""
    if host.hypervisor_type != "KVM":
        return None
    node = compute_of().node
    memory = node.configs.resolve(RESERVED_MEMORY.category, RESERVED_MEMORY.name,
                                  [host.uuid, host.cluster_uuid, host.zone_uuid])
    return HostReservedCapacity(reserved_memory=memory)


# KVMHostFactory: HypervisorFactory, Component, ManagementNodeChangeListener,
# MaxDataVolumeNumberExtensionPoint


class KVMHostFactory(HypervisorFactory):
    """The KVM hypervisor type; a VM takes at most 24 data volumes (virtio disks vdb..vdy)."""

    hypervisor_type = "KVM"
    max_data_volume_number = 24


@hookimpl
def zstack_hypervisor_factories() -> Sequence[HypervisorFactory]:
    return [KVMHostFactory()]


@hookimpl
def zstack_node_join(node_uuid: str) -> Any:
    """Another management node joined. Hosts stay with the node that connected them until the
    cluster layer moves ownership (a later issue); check our own hosts now."""
    log.info("management node %s joined; re-checking the hosts of this node", node_uuid)
    return _recheck_hosts()


@hookimpl
def zstack_node_left(node_uuid: str) -> Any:
    """A management node left: re-check hosts now rather than at the next ping."""
    log.info("management node %s left; re-checking the hosts of this node", node_uuid)
    return _recheck_hosts()


async def _recheck_hosts() -> None:
    compute = compute_of()
    await compute.hosts.ping_all(compute.node.configs.get("kvm", "host.pingInterval"))


# KVMSecurityGroupBackend: SecurityGroupHypervisorBackend, KVMHostConnectExtensionPoint


@hookimpl
def zstack_security_group_backends() -> Sequence[SecurityGroupBackend]:
    return [KVMSecurityGroupBackend(_starting)]


@hookimpl
def zstack_host_connected(host: HostInventory) -> Any:
    """Re-apply the security-group rules of the host's VMs when it (re)connects."""
    backend = backend_of(compute_of().node)
    if backend is None or host.hypervisor_type != "KVM":
        return None
    return backend.host_connected(host)


# KVMConsoleHypervisorBackend: ConsoleHypervisorBackend


@hookimpl
def zstack_console_backends() -> Sequence[ConsoleBackend]:
    return [KVMConsoleHypervisorBackend(_starting)]


# KVMApiInterceptor: ApiMessageInterceptor (with HostApiInterceptor, which must run before it)


@hookimpl
def zstack_api_interceptors() -> Sequence[ApiInterceptor]:
    return [HostApiInterceptor(), KVMApiInterceptor()]


# Kept importable by name for tests and plugin authors.
__all__ = ["HostErrors", "KVMHostFactory", "VmErrors", "api"]
