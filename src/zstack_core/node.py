"""The management node: the one process that hosts every service.

Start-up, in order: read ``zstack.toml`` and the environment; load plugins (entry points and/or
the ones given); validate them; collect what they register (error codes, properties, models,
configs, tags, services, APIs, interceptors, flows); open the database; call
``zstack_node_start``; start services in ``start_order``; call ``zstack_node_ready``. A failure at
any point stops whatever had started, in reverse, and raises :class:`NodeStartError` that says
what failed. ``stop`` undoes it all in reverse.

Use it as ``async with ManagementNode(...) as node:`` or, from synchronous code,
``with SyncManagementNode(...) as node:``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import builtin
from .cluster import Cluster, ClusterPlugin
from .api import ApiInterceptor, ApiRegistration
from .bus import CloudBus
from .db import Database, ModelRegistration, ResourceModel, SchemaError, default_url
from .errors import ErrorCodeSpace, SysErrors, ZStackError
from .globalconfig import GlobalConfig, GlobalConfigs
from .jobs import DatabaseJobStore
from .flow import FlowChain, FlowContribution
from .mediator import ApiJob, ApiMediator
from .messages import APIMessage, MessageReply
from .plugins import PluginError, PluginManager
from .properties import CORE_PROPERTIES, ConfigError, GlobalProperty, Properties, load_toml
from .query import QueryableResource, QueryEngine
from .redaction import install_log_redaction
from .service import Service
from .tags import PatternedSystemTag, SystemTags
from .taskqueue import TaskQueues

__all__ = ["ManagementNode", "NodeStartError", "SyncManagementNode"]

log = logging.getLogger("zstack.node")
T = TypeVar("T")


class NodeStartError(Exception):
    """The node could not start; the message says which plugin or service failed and why."""


class ManagementNode:
    """A management node hosting the services of every loaded plugin.

    :param config: path of ``zstack.toml`` (default: ``$ZSTACK_CONFIG``, or ``zstack.toml`` in the
        data directory if it exists), or an already parsed mapping.
    :param plugins: plugin modules or objects to register explicitly (for embedding and tests).
    :param load_entry_points: also load the installed ``zstack.plugins`` entry points (turned
        off by ``ZSTACK_DISABLE_PLUGIN_AUTOLOAD=1``).
    :param disabled_plugins: entry-point names not to load, besides ``[plugins] disabled`` and
        ``ZSTACK_DISABLE_PLUGINS``.
    :param settings: property overrides, ``{"api.port": 0}``; ``data_dir`` is a shorthand for
        ``node.data_dir``.
    """

    def __init__(
        self,
        *,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        plugins: Iterable[object] = (),
        load_entry_points: bool = True,
        disabled_plugins: Iterable[str] = (),
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self._config = config
        self._explicit_plugins = list(plugins)
        self._load_entry_points = load_entry_points and os.environ.get("ZSTACK_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
        self._disabled = list(disabled_plugins)
        self._settings = dict(settings or {})
        if data_dir is not None:
            self._settings["node.data_dir"] = str(data_dir)
        self.plugins = PluginManager()
        self.hooks = self.plugins.hooks
        self.hooks.node = self
        self.bus = CloudBus()
        self.api = ApiMediator(self)
        self.tasks = TaskQueues()
        self.properties: Properties = Properties(CORE_PROPERTIES)
        self.services: dict[str, Service] = {}
        self.service_owner: dict[str, str] = {}
        self.error_spaces: dict[str, tuple[str, ErrorCodeSpace]] = {"SYS": ("zstack_core", SysErrors)}
        self.flow_contributions: list[FlowContribution] = []
        self.extensions: dict[str, list[tuple[str, Any]]] = {}
        self.model_registrations: dict[str, tuple[str, ModelRegistration]] = {}
        self.db: Database = None  # type: ignore[assignment]  # opened by start()
        self.configs = GlobalConfigs(None, self.hooks)  # type: ignore[arg-type]
        self.tags = SystemTags(None)  # type: ignore[arg-type]
        self.query = QueryEngine(None)  # type: ignore[arg-type]
        self.resource_models: dict[str, type[ResourceModel]] = {}
        self.uuid = ""
        """This node's UUID in the cluster (known once it started; kept across restarts)."""
        self.cluster = Cluster(self)
        """Membership, resource ownership and forwarding when nodes share the database."""
        self.state = "Created"
        self._started: list[Service] = []
        self.http: Any = None
        """The :class:`~zstack_core.http.HttpServer` once :meth:`start_http` ran."""

    # -- properties ---------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(os.path.expanduser(self.properties["node.data_dir"]))

    def _config_source(self) -> tuple[dict[str, Any], Path | None]:
        cfg = self._config
        if isinstance(cfg, Mapping):
            return dict(cfg), None
        if cfg is None:
            env = os.environ.get("ZSTACK_CONFIG")
            if env:
                cfg = env
            else:
                data_dir = self._settings.get("node.data_dir") or os.environ.get("ZSTACK_NODE_DATA_DIR")
                candidate = Path(os.path.expanduser(data_dir)) / "zstack.toml" if data_dir else None
                if candidate is None or not candidate.exists():
                    return {}, None
                cfg = candidate
        path = Path(cfg)
        return load_toml(path), path

    # -- lifecycle ----------------------------------------------------------------------------

    def check_running(self) -> None:
        if self.state != "Running":
            raise SysErrors.exc("1014", f"the management node is {self.state}")

    def _load_plugins(self, data: dict[str, Any]) -> None:
        self.plugins.register(builtin, builtin.NAME)
        self.plugins.infos[builtin.NAME].builtin = True
        self.plugins.register(ClusterPlugin(self), "zstack_core.cluster")
        self.plugins.infos["zstack_core.cluster"].builtin = True
        disabled = set(self._disabled)
        plugins_table = data.get("plugins", {})
        if isinstance(plugins_table, dict) and isinstance(plugins_table.get("disabled"), list):
            disabled |= set(plugins_table["disabled"])
        disabled = self.plugins.disabled_names(disabled)
        if self._load_entry_points:
            self.plugins.load_entry_points(disabled)
        for plugin in self._explicit_plugins:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            if name in disabled:
                continue
            self.plugins.register(plugin, name)
        self.plugins.validate()

    def inspect(self) -> None:
        """Load and validate plugins and collect their registrations without starting anything
        (what ``zstack plugins`` shows). Raises :class:`NodeStartError` like :meth:`start`."""
        try:
            data, path = self._config_source()
            self._load_plugins(data)
            self._load_properties(data, path)
            self._collect_registrations()
        except (PluginError, ConfigError) as exc:
            raise NodeStartError(str(exc)) from exc

    async def start(self) -> ManagementNode:
        if self.state != "Created":
            raise NodeStartError(f"a node can start once; this one is {self.state}")
        self.state = "Starting"
        install_log_redaction()  # passwords in URIs never reach a log
        try:
            data, path = self._config_source()
            self._load_plugins(data)
            self._load_properties(data, path)
            self._collect_registrations()
            await self._open_storage()
            await self.hooks.node_start(self)
            for service in sorted(self.services.values(), key=lambda s: s.start_order):
                try:
                    await service.start()
                except Exception as exc:
                    raise NodeStartError(f"service {service.id!r} of plugin {self.service_owner[service.id]!r} "
                                         f"failed to start: {self._reason(exc)}") from exc
                self._started.append(service)
                self.bus.register_service(service)
            self.state = "Running"
            await self.cluster.ready()
            await self.hooks.node_ready(self)
        except BaseException as exc:
            await self._unwind()
            self.state = "Failed"
            if isinstance(exc, NodeStartError):
                raise
            if isinstance(exc, (PluginError, ConfigError)):
                raise NodeStartError(str(exc)) from exc
            if isinstance(exc, Exception):
                raise NodeStartError(f"management node failed to start: {self._reason(exc)}") from exc
            raise
        log.info("management node ready: %d plugins, %d services, %d APIs",
                 len(self.plugins.active()), len(self.services), len(self.api.registrations))
        return self

    @staticmethod
    def _reason(exc: BaseException) -> str:
        if isinstance(exc, ZStackError):
            return str(exc.error)
        return f"{type(exc).__name__}: {exc}"

    def _load_properties(self, data: dict[str, Any], path: Path | None) -> None:
        declared: list[GlobalProperty] = list(CORE_PROPERTIES)
        for _, prop in self.hooks.global_properties():
            declared.append(prop)
        self.properties = Properties(declared)
        self.properties.load(data, path, overrides=self._settings)
        self.bus.default_timeout = float(self.properties["bus.default_timeout"])

    def _collect_registrations(self) -> None:
        for plugin, space in self.hooks.error_codes():
            if not isinstance(space, ErrorCodeSpace):
                raise PluginError(f"plugin {plugin!r}: zstack_error_codes must return ErrorCodeSpace objects")
            if space.prefix in self.error_spaces:
                other = self.error_spaces[space.prefix][0]
                raise PluginError(f"error code prefix {space.prefix!r} is claimed by both plugin {other!r} and plugin {plugin!r}")
            self.error_spaces[space.prefix] = (plugin, space)
        for plugin, service in self.hooks.services(self):
            if not isinstance(service, Service):
                raise PluginError(f"plugin {plugin!r}: zstack_services must return Service objects, got {service!r}")
            if service.id in self.services:
                raise PluginError(f"service id {service.id!r} is claimed by both plugin "
                                  f"{self.service_owner[service.id]!r} and plugin {plugin!r}")
            service.node = self
            self.services[service.id] = service
            self.service_owner[service.id] = plugin
        for plugin, reg in self.hooks.api_messages():
            if not isinstance(reg, ApiRegistration):
                raise PluginError(f"plugin {plugin!r}: zstack_api_messages must return ApiRegistration objects")
            try:
                self.api.register(reg, plugin)
            except ValueError as exc:
                raise PluginError(str(exc)) from None
        interceptors: list[ApiInterceptor] = []
        for plugin, interceptor in self.hooks.api_interceptors():
            if not isinstance(interceptor, ApiInterceptor):
                raise PluginError(f"plugin {plugin!r}: zstack_api_interceptors must return ApiInterceptor objects")
            interceptors.append(interceptor)
        self.api.add_global_interceptors(interceptors)
        for service in self.services.values():
            own = getattr(service, "interceptors", ())
            if own:
                self.api.service_interceptors[service.id] = list(own)
        for plugin, contribution in self.hooks.flows():
            if not isinstance(contribution, FlowContribution):
                raise PluginError(f"plugin {plugin!r}: zstack_flows must return FlowContribution objects")
            self.flow_contributions.append(contribution)
        for name in ("hypervisor_factories", "primary_storage_factories", "ip_allocation_strategies",
                     "security_group_backends", "console_backends", "host_allocator_filters",
                     "consistency_checks"):
            self.extensions[name] = getattr(self.hooks, name)()
        for plugin, models in self.hooks.models():
            if not isinstance(models, ModelRegistration):
                raise PluginError(f"plugin {plugin!r}: zstack_models must return ModelRegistration objects")
            if models.name in self.model_registrations:
                other = self.model_registrations[models.name][0]
                raise PluginError(f"schema {models.name!r} is claimed by both plugin {other!r} and plugin {plugin!r}")
            self.model_registrations[models.name] = (plugin, models)
            for model in models.models:
                rtype = getattr(model, "RESOURCE_TYPE", "")
                if rtype:
                    self.resource_models[rtype] = model  # type: ignore[assignment]
        configs = self.hooks.global_configs()
        for plugin, cfg in configs:
            if not isinstance(cfg, GlobalConfig):
                raise PluginError(f"plugin {plugin!r}: zstack_global_configs must return GlobalConfig objects")
        tags = self.hooks.system_tags()
        for plugin, tag in tags:
            if not isinstance(tag, PatternedSystemTag):
                raise PluginError(f"plugin {plugin!r}: zstack_system_tags must return PatternedSystemTag objects")
        try:
            self.configs.declare(configs)
            self.tags.declare(tags)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        for plugin, resource in self.hooks.queryable_resources():
            if not isinstance(resource, QueryableResource):
                raise PluginError(f"plugin {plugin!r}: zstack_queryable_resources must return QueryableResource objects")
            try:
                self.query.register(resource)
                self.api.register(ApiRegistration(message=resource.message_class(), service="query",
                                                  resource=resource.name,
                                                  route=("GET", rest_collection(resource.name))), plugin)
            except ValueError as exc:
                raise PluginError(str(exc)) from None
        for reg in self.api.registrations.values():
            if reg.service_id not in self.services:
                raise PluginError(f"API {reg.name} of plugin {self.api.owner(reg.name)!r} is handled by "
                                  f"service {reg.service_id!r}, which no loaded plugin provides")

    async def _open_storage(self) -> None:
        """Open the database, create or upgrade every plugin's schema, load global configs."""
        url = self.properties["database.url"] or default_url(self.data_dir)
        self.db = Database(url)
        self.configs.db = self.tags.db = self.query.db = self.db
        registrations = [reg for _, reg in self.model_registrations.values()]
        try:
            await self.db.run(self.db.migrate, registrations)
        except SchemaError as exc:
            raise NodeStartError(str(exc)) from exc
        except ZStackError as exc:
            raise NodeStartError(f"cannot open the database {redact_url(url)}: {exc.error.details}") from exc
        await self.db.run(self.configs.load_sync)
        self.uuid = self.cluster.identify()
        jobs = DatabaseJobStore(self.db, self.uuid)
        self.api.jobs = jobs
        await self.cluster.start(jobs)  # registers this node; fails jobs no live node will finish

    async def resource_type_of(self, resource_uuid: str) -> str | None:
        """The type (``Host``, ``VmInstance``...) of the resource with ``resource_uuid``."""

        def find() -> str | None:
            for rtype, model in self.resource_models.items():
                if model.select(model.uuid).where(model.uuid == resource_uuid).exists():
                    return rtype
            return None

        return await self.db.run(find)

    async def config_chain(self, resource_uuid: str) -> list[str]:
        """``resource_uuid`` followed by its parents for resource configs (host, cluster, zone)."""

        def chain() -> list[str]:
            for model in self.resource_models.values():
                row = model.get_or_none(model.uuid == resource_uuid)
                if row is not None:
                    return [resource_uuid, *row.config_parents()]
            return [resource_uuid]

        return await self.db.run(chain)

    async def _unwind(self) -> None:
        await self.cluster.leave()
        for service in reversed(self._started):
            self.bus.unregister_service(service.id)
            try:
                await service.stop()
            except Exception:
                log.exception("service %s failed to stop", service.id)
        self._started.clear()
        if self.db is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.db.close)
            except Exception:
                log.exception("closing the database failed")
            self.db = None  # type: ignore[assignment]

    async def stop(self) -> None:
        """Stop accepting work, let in-flight work finish, stop services in reverse order."""
        if self.state not in ("Running", "Starting"):
            return
        self.state = "Stopping"
        await self.cluster.leave()  # peers stop sending work here before the HTTP API closes
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self.hooks.node_stop(self)
        await self.api.drain()
        await self.bus.drain()
        await self._unwind()
        self.state = "Stopped"

    async def __aenter__(self) -> ManagementNode:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP API -----------------------------------------------------------------------------

    async def start_http(self, host: str | None = None, port: int | None = None) -> Any:
        """Serve the HTTP API on ``host``:``port`` (default: the ``api.host``/``api.port``
        properties; port 0 picks a free one) on this node's loop; returns the
        :class:`~zstack_core.http.HttpServer` once it accepts connections (``.url``)."""
        from .http import HttpServer

        self.check_running()
        if self.http is not None:
            raise RuntimeError(f"the HTTP API is already served at {self.http.url}")
        server = HttpServer(self, host or self.properties["api.host"],
                            self.properties["api.port"] if port is None else port)
        await server.start()
        self.http = server
        await self.cluster.advertise(server.host, server.port)
        return server

    async def serve_http(self, host: str | None = None, port: int | None = None) -> None:
        """Serve the HTTP API until cancelled (starting it unless :meth:`start_http` did)."""
        server = self.http if self.http is not None else await self.start_http(host, port)
        await server.serve_forever()

    # -- using the node -----------------------------------------------------------------------

    def flow_chain(self, name: str) -> FlowChain:
        """A new chain made of every flow plugins contributed to ``name``."""
        return FlowChain.assemble(name, self.flow_contributions)

    def extension(self, name: str) -> list[Any]:
        """Objects registered through a registration hook, e.g. ``extension("hypervisor_factories")``."""
        return [item for _, item in self.extensions.get(name, [])]

    async def call_api(self, msg: APIMessage) -> MessageReply:
        """Run an API message to its end and return its reply (errors are in the reply)."""
        return await self.api.call(msg)

    async def submit_api(self, msg: APIMessage) -> ApiJob | MessageReply:
        """Start an API message; long APIs return their job at once."""
        return await self.api.submit(msg)

    async def api_call(self, api_name: str, params: Mapping[str, Any] | None = None, /, *,
                       session_uuid: str | None = None, **kwargs: Any) -> Any:
        """Call ``api_name`` with JSON-like parameters; return the reply or raise ``ZStackError``.

        ``await node.api_call("CreateZone", name="zone1")``
        """
        body = dict(params or {})
        body.update(kwargs)
        msg = self.api.build(api_name, body)
        msg.session_uuid = session_uuid
        reply = await self.api.call(msg)
        if reply.error is not None:
            raise ZStackError(reply.error)
        return reply


def rest_collection(resource: str) -> str:
    """``VmInstance`` -> ``/v1/vm-instances``: the REST collection of a resource type."""
    import re

    words = re.sub(r"(?<!^)(?=[A-Z][a-z])", "-", resource).lower()
    plural = words + ("es" if words.endswith(("s", "x", "ch", "sh")) else "s")
    return f"/v1/{plural}"


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


class SyncManagementNode:
    """A :class:`ManagementNode` for programs that are not async.

    The node runs on an event loop in a background thread; every method blocks until done::

        with SyncManagementNode(data_dir="/tmp/zs") as node:
            zone = node.api_call("CreateZone", name="zone1").inventory
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="zstack-node", daemon=True)
        self.node: ManagementNode | None = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> SyncManagementNode:
        self._thread.start()

        async def make() -> ManagementNode:
            return ManagementNode(**self._kwargs)

        self.node = self._run(make())
        try:
            self._run(self.node.start())
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self) -> None:
        if self.node is not None:
            self._run(self.node.stop())
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncManagementNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call_api(self, msg: APIMessage) -> MessageReply:
        assert self.node is not None
        return self._run(self.node.call_api(msg))

    def api_call(self, api_name: str, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        assert self.node is not None
        return self._run(self.node.api_call(api_name, params, **kwargs))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run any coroutine on the node's loop (for what has no sync method)."""
        return self._run(coro, timeout)
