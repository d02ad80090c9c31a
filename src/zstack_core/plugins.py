"""Finding, validating and calling plugins.

Plugins are found through the ``zstack.plugins`` entry-point group (or given explicitly when a
program embeds the node), checked strictly against :mod:`zstack_core.hookspecs`, and called
through :class:`Hooks`, a facade with one typed method per hook.

Every problem with a plugin is a :class:`PluginError` that names the plugin, its distribution and
version, its module and the hook: a plugin author should never have to read a traceback from the
kernel to learn what they did wrong.
"""

from __future__ import annotations

import contextvars
import difflib
import importlib.metadata
import inspect
import logging
import os
import types
from collections.abc import Awaitable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pluggy

from . import hookspecs
from .api import ApiInterceptor, ApiRegistration
from .errors import ErrorCode, ErrorCodeSpace, SysErrors, ZStackError
from .flow import FlowContribution
from .properties import GlobalProperty
from .service import Service

if TYPE_CHECKING:
    from .header import (
        HostInventory,
        HostReservedCapacity,
        L2NetworkInventory,
        VmInstanceInventory,
        VmInstanceSpec,
        VmNicInventory,
        VolumeInventory,
    )

__all__ = ["ENTRY_POINT_GROUP", "Hooks", "PluginError", "PluginInfo", "PluginManager", "current_node"]

ENTRY_POINT_GROUP = "zstack.plugins"
HOOK_PREFIX = "zstack_"
log = logging.getLogger("zstack.plugins")

T = TypeVar("T")


class PluginError(Exception):
    """A plugin cannot be loaded or is wrong. The message says which plugin and what to fix."""


@attrs.define(kw_only=True)
class PluginInfo:
    """What the node knows about one plugin (shown by ``zstack plugins``)."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str = ""
    hooks: list[str] = attrs.field(factory=list)
    disabled: bool = False
    error: str | None = None
    builtin: bool = False

    def describe(self) -> str:
        where = f"{self.distribution} {self.version}" if self.distribution else "registered explicitly"
        return f"plugin {self.name!r} ({where}, module {self.module})"


class _ZStackPluginManager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        # As pytest does for ``pytest_*``: a function named like a hook is a hookimpl even
        # without the marker, so a misspelled hook name is caught instead of silently ignored.
        if opts is None and name.startswith(HOOK_PREFIX):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {}
        return opts


def _module_name(plugin: object) -> str:
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}"


def _env_list(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


class PluginManager:
    """Loads plugins and checks them against the hookspecs."""

    def __init__(self) -> None:
        self.pm = _ZStackPluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.hooks = Hooks(self)

    # -- loading ------------------------------------------------------------------------------

    def load_entry_points(self, disabled: Iterable[str] = ()) -> None:
        """Register every plugin of the ``zstack.plugins`` group except ``disabled`` ones."""
        disabled = set(disabled)
        seen: dict[str, str | None] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            if ep.name in seen:
                if seen[ep.name] == (dist.name if dist else None):
                    continue  # the same distribution visible twice on sys.path
                other = PluginInfo(name=ep.name, distribution=dist.name if dist else None,
                                   version=dist.version if dist else None, module=ep.value)
                raise PluginError(f"plugin name {ep.name!r} is claimed by both {self.infos[ep.name].describe()} "
                                  f"and {other.describe()}")
            seen[ep.name] = dist.name if dist else None
            info = PluginInfo(
                name=ep.name,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
                module=ep.value,
                disabled=ep.name in disabled,
            )
            self.infos[ep.name] = info
            if info.disabled:
                self.pm.set_blocked(ep.name)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                info.error = f"import failed: {type(exc).__name__}: {exc}"
                raise PluginError(f"{info.describe()} failed to import: {type(exc).__name__}: {exc}") from exc
            self._register(plugin, info)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register ``plugin`` (a module or an object with hookimpls) explicitly."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        info = self.infos.get(name) or PluginInfo(name=name, module=_module_name(plugin))
        self.infos[name] = info
        self._register(plugin, info)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        info.module = _module_name(plugin)
        try:
            self.pm.register(plugin, name=info.name)
        except ValueError as exc:  # the same plugin object or name twice
            raise PluginError(f"{info.describe()} cannot be registered: {exc}") from None
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{info.describe()}: {self._explain(exc)}") from None
        info.hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])

    def _explain(self, exc: pluggy.PluginValidationError) -> str:
        # pluggy's message names the function and arguments; keep it, lead with the hook.
        return str(exc).replace("\n", " ").strip()

    def disabled_names(self, configured: Iterable[str] = ()) -> set[str]:
        """Plugins disabled by config and by ``ZSTACK_DISABLE_PLUGINS=a,b``."""
        return set(configured) | set(_env_list("ZSTACK_DISABLE_PLUGINS"))

    def validate(self) -> None:
        """Refuse hookimpls of hooks that have no spec (a misspelled or removed hook)."""
        known = sorted(name for name in dir(hookspecs) if name.startswith(HOOK_PREFIX))
        problems = []
        for name in sorted(vars(self.pm.hook)):
            caller = getattr(self.pm.hook, name)
            if not isinstance(caller, pluggy.HookCaller) or caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                info = self.infos[self.pm.get_name(impl.plugin) or ""]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"{info.describe()} implements unknown hook {name!r}{hint}")
        if problems:
            raise PluginError("\n".join(problems))

    def plugin_name(self, plugin: object) -> str:
        return self.pm.get_name(plugin) or _module_name(plugin)

    def info_of(self, plugin: object) -> PluginInfo:
        return self.infos[self.plugin_name(plugin)]

    def active(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if not i.disabled]


async def await_me_maybe(value: T | Awaitable[T]) -> T:
    """Hook results may be values or awaitables (``async def`` hookimpls)."""
    if inspect.isawaitable(value):
        return await value
    return value


_current_node: contextvars.ContextVar[Any] = contextvars.ContextVar("zstack_current_node", default=None)


def current_node() -> Any:
    """The management node whose hook is running, for hookimpls of extension points that have no
    ``node`` argument (``zstack_vm_domain_devices(spec)``); tasks they start inherit it. None
    outside a hook call. Lets one process run several nodes with the same plugin modules."""
    return _current_node.get()


class Hooks:
    """The typed facade: one method per hook, with the semantics of that hook.

    * registration hooks return ``list[(plugin_name, item)]`` collected from every plugin;
    * ``before``/check hooks run every implementation, awaiting each, and stop at the first that
      raises, re-raising its ``ZStackError`` (any other exception becomes ``SYS.1010`` naming the
      plugin);
    * notification hooks run every implementation and log (never propagate) failures.
    """

    def __init__(self, manager: PluginManager) -> None:
        self._m = manager
        self.node: Any = None
        """The node these hooks belong to; :func:`current_node` returns it inside hook calls."""

    def _impls(self, name: str) -> list[pluggy.HookImpl]:
        # pluggy calls the last registered implementation first; keep its order.
        return list(reversed(getattr(self._m.pm.hook, name).get_hookimpls()))

    def _plugin_error(self, impl: pluggy.HookImpl, name: str, exc: BaseException) -> ZStackError:
        info = self._m.info_of(impl.plugin)
        cause = exc.error if isinstance(exc, ZStackError) else ErrorCode(
            code="SYS.1000", description="internal error", details=f"{type(exc).__name__}: {exc}"
        )
        return SysErrors.exc("1010", f"hook {name} of {info.describe()} failed", cause=cause, plugin=info.name)

    async def _run(self, name: str, kwargs: dict[str, Any], *, notify: bool = False) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        # set/restore, not set/reset: the bus runs a handler's first step in its caller's context
        # and the rest in a task's copy of it, so a hook call can end in another Context than it
        # began in, where ``reset(token)`` raises ValueError.
        previous = _current_node.get()
        _current_node.set(self.node)
        try:
            return await self._run_impls(name, kwargs, notify, out)
        finally:
            _current_node.set(previous)

    async def _run_impls(self, name: str, kwargs: dict[str, Any], notify: bool,
                         out: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        for impl in self._impls(name):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
                if inspect.isawaitable(result):
                    result = await result
            except ZStackError as exc:
                if notify:
                    log.error("hook %s of plugin %s failed: %s", name, self._m.plugin_name(impl.plugin), exc)
                    continue
                raise  # a deliberate refusal: the plugin already said why
            except Exception as exc:
                if notify:
                    log.exception("hook %s of plugin %s raised", name, self._m.plugin_name(impl.plugin))
                    continue
                raise self._plugin_error(impl, name, exc) from exc
            out.append((self._m.plugin_name(impl.plugin), result))
        return out

    def _collect_sync(self, name: str, expect: type | tuple[type, ...] = object, **kwargs: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for impl in self._impls(name):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as exc:
                info = self._m.info_of(impl.plugin)
                raise PluginError(f"{info.describe()} raised in hook {name}: {type(exc).__name__}: {exc}") from exc
            if inspect.isawaitable(result):
                info = self._m.info_of(impl.plugin)
                if inspect.iscoroutine(result):
                    result.close()
                raise PluginError(f"{info.describe()}: registration hook {name} must not be async")
            if result is None:
                continue
            if not isinstance(result, (list, tuple)):
                info = self._m.info_of(impl.plugin)
                raise PluginError(f"{info.describe()}: hook {name} must return a list, got {type(result).__name__}")
            for item in result:
                if not isinstance(item, expect):
                    info = self._m.info_of(impl.plugin)
                    kinds = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
                    raise PluginError(f"{info.describe()}: hook {name} must return {kinds} objects, got {item!r}")
                out.append((self._m.plugin_name(impl.plugin), item))
        return out

    # -- registration hooks (sync, asked once) ------------------------------------------------

    def services(self, node: Any) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_services", Service, node=node)

    def api_messages(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_api_messages", ApiRegistration)

    def api_interceptors(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_api_interceptors", ApiInterceptor)

    def error_codes(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_error_codes", ErrorCodeSpace)

    def flows(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_flows", FlowContribution)

    def models(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_models")

    def global_properties(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_global_properties", GlobalProperty)

    def global_configs(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_global_configs")

    def system_tags(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_system_tags")

    def queryable_resources(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_queryable_resources")

    def hypervisor_factories(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_hypervisor_factories")

    def primary_storage_factories(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_primary_storage_factories")

    def ip_allocation_strategies(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_ip_allocation_strategies")

    def security_group_backends(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_security_group_backends")

    def console_backends(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_console_backends")

    def host_allocator_filters(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_host_allocator_filters")

    def host_allocator_strategies(self) -> list[tuple[str, Any]]:
        return self._collect_sync("zstack_host_allocator_strategies")

    def consistency_checks(self) -> list[tuple[str, Any]]:
        from .check import ConsistencyCheck

        return self._collect_sync("zstack_consistency_checks", ConsistencyCheck)

    # -- extension points that may refuse (exceptions propagate) -----------------------------

    async def call(self, name: str, /, **kwargs: Any) -> list[Any]:
        """Run every implementation of ``name``; the first failure propagates.

        For hooks whose callers need their results (``zstack_host_reserved_capacity``) or whose
        failure must stop the operation (``before`` hooks, ``zstack_node_start``).
        """
        return [r for _, r in await self._run(name, kwargs)]

    async def notify(self, name: str, /, **kwargs: Any) -> None:
        """Run every implementation of ``name``, logging failures: for ``after``/``failed``
        hooks, where the operation has already happened."""
        await self._run(name, kwargs, notify=True)

    def has_impls(self, name: str) -> bool:
        return bool(getattr(self._m.pm.hook, name).get_hookimpls())

    # Typed shorthands for the extension points the kernel itself calls.
    async def node_start(self, node: Any) -> None:
        await self.call("zstack_node_start", node=node)

    async def node_ready(self, node: Any) -> None:
        await self.call("zstack_node_ready", node=node)

    async def node_stop(self, node: Any) -> None:
        await self.notify("zstack_node_stop", node=node)

    async def global_config_changed(self, category: str, name: str, old_value: Any, new_value: Any,
                                    resource_uuid: str | None) -> None:
        await self.notify("zstack_global_config_changed", category=category, name=name,
                          old_value=old_value, new_value=new_value, resource_uuid=resource_uuid)

    async def cascade(self, action: Any) -> None:
        await self.call("zstack_cascade", action=action)

    # Extension points, one typed method each (generated from hookspecs.py; tests check they stay
    # in step). ``before``/check hooks propagate the first refusal; ``after``/``failed`` hooks
    # and releases only log failures, since the operation has already happened.

    async def host_after_add(self, host: HostInventory) -> None:
        """A host was added and connected for the first time."""
        await self.notify("zstack_host_after_add", host=host)

    async def host_after_delete(self, host: HostInventory) -> None:
        """``host`` was deleted."""
        await self.notify("zstack_host_after_delete", host=host)

    async def host_before_add(self, host: HostInventory) -> None:
        """A host is about to be added; raise ``ZStackError`` to refuse."""
        await self.call("zstack_host_before_add", host=host)

    async def host_before_delete(self, host: HostInventory) -> None:
        """``host`` is about to be deleted; raise to refuse."""
        await self.call("zstack_host_before_delete", host=host)

    async def host_connected(self, host: HostInventory, first_time: bool) -> None:
        """A host connected or reconnected (the seed's ``KVMHostConnectExtensionPoint``)."""
        await self.call("zstack_host_connected", host=host, first_time=first_time)

    async def host_disconnected(self, host: HostInventory, reason: ErrorCode) -> None:
        """The node lost a host (ping failed, connection closed)."""
        await self.notify("zstack_host_disconnected", host=host, reason=reason)

    async def host_maintenance_policy(self, host: HostInventory, vm_uuids: list[str]) -> list[dict[str, str] | None]:
        """How to clear ``host`` of VMs when it enters maintenance: ``{vm_uuid: "migrate"|"stop"}``."""
        return await self.call("zstack_host_maintenance_policy", host=host, vm_uuids=vm_uuids)

    async def host_ping(self, host: HostInventory) -> None:
        """Called on each successful ping of ``host``; raise ``ZStackError`` to report it unhealthy."""
        await self.call("zstack_host_ping", host=host)

    async def host_reserved_capacity(self, host: HostInventory) -> list[HostReservedCapacity | None]:
        """Capacity to hold back on ``host`` (the seed's ``HostReservedCapacityExtensionPoint``)."""
        return await self.call("zstack_host_reserved_capacity", host=host)

    async def l2_realize_on_host(self, l2: L2NetworkInventory, host: HostInventory) -> None:
        """Make ``l2`` exist on ``host`` (create its bridge), when the host connects or the network"""
        await self.call("zstack_l2_realize_on_host", l2=l2, host=host)

    async def network_services_apply(self, spec: VmInstanceSpec) -> None:
        """Apply network services (DHCP, DNS, security groups) for the VM's NICs before it starts."""
        await self.call("zstack_network_services_apply", spec=spec)

    async def network_services_release(self, spec: VmInstanceSpec) -> None:
        """Release the VM's network services (DHCP entries, rules) when it stops or goes away."""
        await self.notify("zstack_network_services_release", spec=spec)

    async def node_join(self, node_uuid: str) -> None:
        """Another management node joined the cluster (the seed's ``ManagementNodeChangeListener``)."""
        await self.notify("zstack_node_join", node_uuid=node_uuid)

    async def node_left(self, node_uuid: str) -> None:
        """A management node left or was found dead; its resources now belong to the survivors."""
        await self.notify("zstack_node_left", node_uuid=node_uuid)

    async def vm_after_attach_nic(self, vm: VmInstanceInventory, nic: VmNicInventory) -> None:
        """``nic`` was attached to ``vm``."""
        await self.notify("zstack_vm_after_attach_nic", vm=vm, nic=nic)

    async def vm_after_attach_volume(self, vm: VmInstanceInventory, volume: VolumeInventory) -> None:
        """``volume`` was attached to ``vm``."""
        await self.notify("zstack_vm_after_attach_volume", vm=vm, volume=volume)

    async def vm_after_destroy(self, vm: VmInstanceInventory) -> None:
        """``vm`` was destroyed (it can still be recovered until expunged)."""
        await self.notify("zstack_vm_after_destroy", vm=vm)

    async def vm_after_detach_nic(self, vm: VmInstanceInventory, nic: VmNicInventory) -> None:
        """``nic`` was detached from ``vm``."""
        await self.notify("zstack_vm_after_detach_nic", vm=vm, nic=nic)

    async def vm_after_detach_volume(self, vm: VmInstanceInventory, volume: VolumeInventory) -> None:
        """``volume`` was detached from ``vm``."""
        await self.notify("zstack_vm_after_detach_volume", vm=vm, volume=volume)

    async def vm_after_instantiate_resource(self, spec: VmInstanceSpec) -> None:
        """The VM exists on the hypervisor (and runs, unless created stopped)."""
        await self.notify("zstack_vm_after_instantiate_resource", spec=spec)

    async def vm_after_migrate(self, vm: VmInstanceInventory, source_host_uuid: str) -> None:
        """``vm`` now runs on ``vm.host_uuid``, having left ``source_host_uuid``."""
        await self.notify("zstack_vm_after_migrate", vm=vm, source_host_uuid=source_host_uuid)

    async def vm_after_reboot(self, vm: VmInstanceInventory) -> None:
        """``vm`` rebooted."""
        await self.notify("zstack_vm_after_reboot", vm=vm)

    async def vm_after_start(self, vm: VmInstanceInventory) -> None:
        """``vm`` started."""
        await self.notify("zstack_vm_after_start", vm=vm)

    async def vm_after_stop(self, vm: VmInstanceInventory) -> None:
        """``vm`` stopped."""
        await self.notify("zstack_vm_after_stop", vm=vm)

    async def vm_before_attach_nic(self, vm: VmInstanceInventory, nic: VmNicInventory) -> None:
        """``nic`` is about to be attached to ``vm``; raise to refuse."""
        await self.call("zstack_vm_before_attach_nic", vm=vm, nic=nic)

    async def vm_before_attach_volume(self, vm: VmInstanceInventory, volume: VolumeInventory) -> None:
        """``volume`` is about to be attached to ``vm``; raise to refuse."""
        await self.call("zstack_vm_before_attach_volume", vm=vm, volume=volume)

    async def vm_before_destroy(self, vm: VmInstanceInventory) -> None:
        """``vm`` is about to be destroyed; raise to refuse."""
        await self.call("zstack_vm_before_destroy", vm=vm)

    async def vm_before_detach_nic(self, vm: VmInstanceInventory, nic: VmNicInventory) -> None:
        """``nic`` is about to be detached from ``vm``; raise to refuse."""
        await self.call("zstack_vm_before_detach_nic", vm=vm, nic=nic)

    async def vm_before_detach_volume(self, vm: VmInstanceInventory, volume: VolumeInventory) -> None:
        """``volume`` is about to be detached from ``vm``; raise to refuse."""
        await self.call("zstack_vm_before_detach_volume", vm=vm, volume=volume)

    async def vm_before_instantiate_resource(self, spec: VmInstanceSpec) -> None:
        """Resources (host, volumes, NICs) are allocated; the VM is about to be created on the"""
        await self.call("zstack_vm_before_instantiate_resource", spec=spec)

    async def vm_before_migrate(self, vm: VmInstanceInventory, destination_host_uuid: str) -> None:
        """``vm`` is about to migrate to another host; raise to refuse."""
        await self.call("zstack_vm_before_migrate", vm=vm, destination_host_uuid=destination_host_uuid)

    async def vm_before_reboot(self, vm: VmInstanceInventory) -> None:
        """``vm`` is about to reboot; raise to refuse."""
        await self.call("zstack_vm_before_reboot", vm=vm)

    async def vm_before_start(self, vm: VmInstanceInventory) -> None:
        """``vm`` is about to start; raise to refuse."""
        await self.call("zstack_vm_before_start", vm=vm)

    async def vm_before_stop(self, vm: VmInstanceInventory) -> None:
        """``vm`` is about to stop; raise to refuse."""
        await self.call("zstack_vm_before_stop", vm=vm)

    async def vm_create_check(self, spec: VmInstanceSpec) -> None:
        """Veto a VM create before anything is allocated: raise ``ZStackError`` to refuse."""
        await self.call("zstack_vm_create_check", spec=spec)

    async def vm_domain_devices(self, spec: VmInstanceSpec) -> None:
        """Add devices to the VM's hypervisor definition: append to ``spec.disks``/``spec.nic_tos``."""
        await self.call("zstack_vm_domain_devices", spec=spec)

    async def vm_failed_to_attach_volume(self, vm: VmInstanceInventory, volume: VolumeInventory, error: ErrorCode) -> None:
        """Attaching ``volume`` to ``vm`` failed."""
        await self.notify("zstack_vm_failed_to_attach_volume", vm=vm, volume=volume, error=error)

    async def vm_failed_to_destroy(self, vm: VmInstanceInventory, error: ErrorCode) -> None:
        """Destroying ``vm`` failed."""
        await self.notify("zstack_vm_failed_to_destroy", vm=vm, error=error)

    async def vm_failed_to_migrate(self, vm: VmInstanceInventory, destination_host_uuid: str, error: ErrorCode) -> None:
        """Migrating ``vm`` failed; it still runs where it was."""
        await self.notify("zstack_vm_failed_to_migrate", vm=vm, destination_host_uuid=destination_host_uuid, error=error)

    async def vm_failed_to_reboot(self, vm: VmInstanceInventory, error: ErrorCode) -> None:
        """Rebooting ``vm`` failed."""
        await self.notify("zstack_vm_failed_to_reboot", vm=vm, error=error)

    async def vm_failed_to_start(self, vm: VmInstanceInventory, error: ErrorCode) -> None:
        """Starting ``vm`` failed with ``error``."""
        await self.notify("zstack_vm_failed_to_start", vm=vm, error=error)

    async def vm_failed_to_stop(self, vm: VmInstanceInventory, error: ErrorCode) -> None:
        """Stopping ``vm`` failed."""
        await self.notify("zstack_vm_failed_to_stop", vm=vm, error=error)

    async def vm_release_resource(self, spec: VmInstanceSpec, reason: str) -> None:
        """Release what was prepared for the VM: after a failed create (``reason="rollback"``) or"""
        await self.notify("zstack_vm_release_resource", spec=spec, reason=reason)

    async def vm_state_changed(self, vm: VmInstanceInventory, old_state: str, new_state: str) -> None:
        """``vm`` changed state (by an API, or because libvirt said so)."""
        await self.notify("zstack_vm_state_changed", vm=vm, old_state=old_state, new_state=new_state)

    def known_hooks(self) -> Sequence[str]:
        return sorted(n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX))
