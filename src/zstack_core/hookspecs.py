"""Every extension point of the management node, as pluggy hookspecs.

Plugins implement these with ``@hookimpl`` (or by naming a module-level function after the hook,
as pytest allows) and register through the ``zstack.plugins`` entry-point group. Hookimpls may be
``async def``: the node awaits what they return. A hookimpl may take any subset of the arguments
its spec lists, by name.

Two kinds:

* **Registration hooks** are asked once while the node starts and return what the plugin
  provides (services, APIs, configs, tags...). Their results are collected from every plugin.
* **Extension points** are called while work happens (a VM starts, a host connects). ``before``
  hooks may refuse by raising ``ZStackError``; ``after`` and ``failed`` hooks are notifications
  whose exceptions are logged and reported with the plugin's name, never swallowed silently.

Callers go through :class:`zstack_core.plugins.Hooks`, which has one typed method per hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .api import ApiInterceptor, ApiRegistration
    from .check import ConsistencyCheck
    from .globalconfig import GlobalConfig
    from .properties import GlobalProperty
    from .db import ModelRegistration
    from .errors import ErrorCode, ErrorCodeSpace
    from .flow import FlowContribution
    from .header import (
        CascadeAction,
        HostInventory,
        HostReservedCapacity,
        L2NetworkInventory,
        VmInstanceInventory,
        VmInstanceSpec,
        VmNicInventory,
        VolumeInventory,
    )
    from .header.backends import (
        ConsoleBackend,
        HostAllocatorFilter,
        HostAllocatorStrategy,
        HypervisorFactory,
        IpAllocationStrategy,
        PrimaryStorageFactory,
        SecurityGroupBackend,
    )
    from .node import ManagementNode
    from .query import QueryableResource
    from .service import Service
    from .tags import PatternedSystemTag

PROJECT = "zstack"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ---------------------------------------------------------------------------------------------
# Registration hooks: asked once at start-up
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    """The services this plugin runs (ZStack's ``Service`` beans).

    Called once while the node starts, before any service starts. ``node`` is the node being
    started. Return service instances; each ``id`` must be unique across plugins.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_api_messages() -> Sequence[ApiRegistration]:
    """The API messages this plugin serves, each with its service and its own interceptors.

    Called once at start-up. API names (``CreateZone``) must be unique across plugins.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_api_interceptors() -> Sequence[ApiInterceptor]:
    """Global API interceptors (the seed's ``ApiMessageInterceptor`` beans).

    Called once at start-up. Global interceptors run before per-service and per-message ones,
    ordered by their ``order`` attribute.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    """The error-code prefixes this plugin owns (``HOST``, ``VM``...), with their codes.

    Called once at start-up. Two plugins claiming one prefix stop start-up.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_flows() -> Sequence[FlowContribution]:
    """Flows this plugin adds to shared flow chains (VM create, VM expunge, host connect).

    Called once at start-up. Each contribution names the chain and its position; chain names and
    positions are in :mod:`zstack_core.header.flows`.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_models() -> Sequence[ModelRegistration]:
    """Database models and versioned migrations this plugin owns.

    Called once at start-up, before services start. The node creates and upgrades each plugin's
    schema and records its version.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_global_properties() -> Sequence[GlobalProperty]:
    """Start-up settings this plugin reads from ``zstack.toml`` / ``ZSTACK_*`` (ZStack's
    ``@GlobalProperty``).

    Called once, before the configuration file is validated: an unknown key is an error.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_global_configs() -> Sequence[GlobalConfig]:
    """Runtime settings this plugin declares (category, name, type, default, validators).

    Called once at start-up; a config new to the database gets its default.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_system_tags() -> Sequence[PatternedSystemTag]:
    """Patterned system tags this plugin declares (``qemu-img::version::{version}``).

    Called once at start-up. Create APIs refuse tags that match no declared pattern.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_queryable_resources() -> Sequence[QueryableResource]:
    """Inventories users can query (``VmInstance``): each gets a ``Query<Resource>`` API.

    Called once at start-up.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_hypervisor_factories() -> Sequence[HypervisorFactory]:
    """Hypervisor types this plugin provides (the seed's ``KVMHostFactory``).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_primary_storage_factories() -> Sequence[PrimaryStorageFactory]:
    """Primary storage types this plugin provides (``LocalStorage``).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_ip_allocation_strategies() -> Sequence[IpAllocationStrategy]:
    """IP allocation strategies (``FirstAvailable``, ``Random``).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_security_group_backends() -> Sequence[SecurityGroupBackend]:
    """Security-group backends by hypervisor type (the seed's ``KVMSecurityGroupBackend``).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_console_backends() -> Sequence[ConsoleBackend]:
    """Console backends by hypervisor type (the seed's ``KVMConsoleHypervisorBackend``).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_allocator_filters() -> Sequence[HostAllocatorFilter]:
    """Filters that remove hosts unable to take a VM, applied in registration order after
    compute's own capacity filter.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_allocator_strategies() -> Sequence[HostAllocatorStrategy]:
    """Host allocator strategies: how compute orders the hosts that passed every filter (the
    first that still has room takes the VM). Chosen by name through an instance offering's
    ``allocatorStrategy``; names must be unique.

    Called once when the compute service starts.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_consistency_checks() -> Sequence[ConsistencyCheck]:
    """Consistency checks this plugin contributes to ``zstack check`` (see
    :mod:`zstack_core.check`): each compares what the plugin's tables record with what the hosts
    really have and with its own bookkeeping (orphan domains, volume files, IPs, capacity).

    Called once at start-up. A check only reads; it reaches hosts through ``HostRunMsg``.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# Node lifecycle
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_node_start(node: ManagementNode) -> None:
    """The node has loaded plugins and opened its database; services are about to start.

    Raising fails the start (what already started is stopped).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_node_ready(node: ManagementNode) -> None:
    """Every service has started; the node accepts API calls.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_node_stop(node: ManagementNode) -> None:
    """The node is stopping; called before services stop.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_node_join(node_uuid: str) -> None:
    """Another management node joined the cluster (the seed's ``ManagementNodeChangeListener``).

    Ownership of resources may move to it: check ``node.cluster.owns(uuid)`` again for what you
    manage. Also called with this node's own UUID when it enters the ring (once it serves HTTP
    and so can receive forwarded work); called in order, never during a heartbeat.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_node_left(node_uuid: str) -> None:
    """A management node left or was found dead; its resources now belong to the survivors
    (``node.cluster.owns``): reconnect what you inherited. Its running API jobs end Failed
    (``SYS.1006`` caused by ``MN.1005``).

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# Global configs
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_global_config_changed(category: str, name: str, old_value: Any, new_value: Any, resource_uuid: str | None) -> None:
    """A global config (or a resource's override of it, when ``resource_uuid`` is set) changed.

    Called after the new value is stored, on every node.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# Cascade
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_cascade(action: CascadeAction) -> None:
    """A resource is being deleted; delete (or veto, in ``check`` mode) the children you own.

    Called three ways for each delete, as ZStack's cascade does: ``check`` (raise
    ``ZStackError`` to refuse), then ``delete``, or ``force`` when the user forces it.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_host_before_add(host: HostInventory) -> None:
    """A host is about to be added; raise ``ZStackError`` to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_after_add(host: HostInventory) -> None:
    """A host was added and connected for the first time.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_connected(host: HostInventory, first_time: bool) -> None:
    """A host connected or reconnected (the seed's ``KVMHostConnectExtensionPoint``).

    Re-apply whatever the host must carry (networks, storage pools, security-group rules).
    Raising fails the connect: the host stays Disconnected.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_disconnected(host: HostInventory, reason: ErrorCode) -> None:
    """The node lost a host (ping failed, connection closed).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_ping(host: HostInventory) -> None:
    """Called on each successful ping of ``host``; raise ``ZStackError`` to report it unhealthy.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_reserved_capacity(host: HostInventory) -> HostReservedCapacity | None:
    """Capacity to hold back on ``host`` (the seed's ``HostReservedCapacityExtensionPoint``).

    Results from every plugin are added together.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_maintenance_policy(host: HostInventory, vm_uuids: list[str]) -> dict[str, str] | None:
    """How to clear ``host`` of VMs when it enters maintenance: ``{vm_uuid: "migrate"|"stop"}``.

    The first plugin answering for a VM wins; VMs nobody answers for are migrated.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_before_delete(host: HostInventory) -> None:
    """``host`` is about to be deleted; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_host_after_delete(host: HostInventory) -> None:
    """``host`` was deleted.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# VM instances
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_vm_create_check(spec: VmInstanceSpec) -> None:
    """Veto a VM create before anything is allocated: raise ``ZStackError`` to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_instantiate_resource(spec: VmInstanceSpec) -> None:
    """Resources (host, volumes, NICs) are allocated; the VM is about to be created on the
    hypervisor. Prepare what it needs there; raise to fail (and roll back) the create.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_instantiate_resource(spec: VmInstanceSpec) -> None:
    """The VM exists on the hypervisor (and runs, unless created stopped).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_release_resource(spec: VmInstanceSpec, reason: str) -> None:
    """Release what was prepared for the VM: after a failed create (``reason="rollback"``) or
    when it is expunged (``"expunge"``). Must be idempotent.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_domain_devices(spec: VmInstanceSpec) -> None:
    """Add devices to the VM's hypervisor definition: append to ``spec.disks``/``spec.nic_tos``.

    Called each time the VM is (re)defined on a host: create, start, migrate.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_start(vm: VmInstanceInventory) -> None:
    """``vm`` is about to start; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_start(vm: VmInstanceInventory) -> None:
    """``vm`` started.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_failed_to_start(vm: VmInstanceInventory, error: ErrorCode) -> None:
    """Starting ``vm`` failed with ``error``.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_stop(vm: VmInstanceInventory) -> None:
    """``vm`` is about to stop; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_stop(vm: VmInstanceInventory) -> None:
    """``vm`` stopped.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_failed_to_stop(vm: VmInstanceInventory, error: ErrorCode) -> None:
    """Stopping ``vm`` failed.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_reboot(vm: VmInstanceInventory) -> None:
    """``vm`` is about to reboot; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_reboot(vm: VmInstanceInventory) -> None:
    """``vm`` rebooted.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_failed_to_reboot(vm: VmInstanceInventory, error: ErrorCode) -> None:
    """Rebooting ``vm`` failed.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_destroy(vm: VmInstanceInventory) -> None:
    """``vm`` is about to be destroyed; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_destroy(vm: VmInstanceInventory) -> None:
    """``vm`` was destroyed (it can still be recovered until expunged).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_failed_to_destroy(vm: VmInstanceInventory, error: ErrorCode) -> None:
    """Destroying ``vm`` failed.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_migrate(vm: VmInstanceInventory, destination_host_uuid: str) -> None:
    """``vm`` is about to migrate to another host; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_migrate(vm: VmInstanceInventory, source_host_uuid: str) -> None:
    """``vm`` now runs on ``vm.host_uuid``, having left ``source_host_uuid``.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_failed_to_migrate(vm: VmInstanceInventory, destination_host_uuid: str, error: ErrorCode) -> None:
    """Migrating ``vm`` failed; it still runs where it was.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_state_changed(vm: VmInstanceInventory, old_state: str, new_state: str) -> None:
    """``vm`` changed state (by an API, or because libvirt said so).

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_attach_volume(vm: VmInstanceInventory, volume: VolumeInventory) -> None:
    """``volume`` is about to be attached to ``vm``; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_attach_volume(vm: VmInstanceInventory, volume: VolumeInventory) -> None:
    """``volume`` was attached to ``vm``.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_failed_to_attach_volume(vm: VmInstanceInventory, volume: VolumeInventory, error: ErrorCode) -> None:
    """Attaching ``volume`` to ``vm`` failed.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_detach_volume(vm: VmInstanceInventory, volume: VolumeInventory) -> None:
    """``volume`` is about to be detached from ``vm``; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_detach_volume(vm: VmInstanceInventory, volume: VolumeInventory) -> None:
    """``volume`` was detached from ``vm``.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_attach_nic(vm: VmInstanceInventory, nic: VmNicInventory) -> None:
    """``nic`` is about to be attached to ``vm``; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_attach_nic(vm: VmInstanceInventory, nic: VmNicInventory) -> None:
    """``nic`` was attached to ``vm``.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_before_detach_nic(vm: VmInstanceInventory, nic: VmNicInventory) -> None:
    """``nic`` is about to be detached from ``vm``; raise to refuse.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_vm_after_detach_nic(vm: VmInstanceInventory, nic: VmNicInventory) -> None:
    """``nic`` was detached from ``vm``.

    .. versionadded:: 0.1
    """


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


@hookspec
def zstack_l2_realize_on_host(l2: L2NetworkInventory, host: HostInventory) -> None:
    """Make ``l2`` exist on ``host`` (create its bridge), when the host connects or the network
    is attached to the host's cluster. Implemented by the hypervisor plugin of ``host``: check
    ``host.hypervisor_type``.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_network_services_apply(spec: VmInstanceSpec) -> None:
    """Apply network services (DHCP, DNS, security groups) for the VM's NICs before it starts.

    .. versionadded:: 0.1
    """


@hookspec
def zstack_network_services_release(spec: VmInstanceSpec) -> None:
    """Release the VM's network services (DHCP entries, rules) when it stops or goes away.

    .. versionadded:: 0.1
    """
