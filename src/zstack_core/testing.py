"""Pytest fixtures for testing zstack plugins against a real management node.

Opt in from a test module or your root ``conftest.py``::

    pytest_plugins = ["zstack_core.testing"]

    async def test_zone(make_node):
        node = await make_node(plugins=["kvm"])
        reply = await api(node, "CreateZone", name="zone1")
        assert reply.inventory.name == "zone1"

What you get:

* ``make_node`` -- a factory fixture: ``await make_node(plugins=[...])`` starts a
  :class:`~zstack_core.ManagementNode` in-process with a fresh SQLite database under
  ``tmp_path``, the libvirt test driver (``node.libvirt_uri = test:///default``) and exactly the
  plugins named (installed entry-point names such as ``"kvm"``, or plugin modules/objects); every
  node it started is stopped when the test ends.
* ``zstack_node`` -- one started node; its plugins come from indirect parametrization
  (``@pytest.mark.parametrize("zstack_node", [["kvm"]], indirect=True)``), else every installed
  plugin.
* :func:`api` -- call an API by name with snake_case or camelCase parameters; returns the reply
  or raises :class:`~zstack_core.ZStackError`.
* :class:`assert_error` -- assert that an API call fails with an error code (``"SYS.1007"``)
  or a prefix (``"QUOTA"``) and get the :class:`~zstack_core.ErrorCode` back.
* :class:`EnvSpec` / :func:`build_env` -- build zone -> cluster -> host -> primary storage ->
  L2/L3 + IP range -> image -> VM in a few lines, through public APIs only.

The fixtures need ``pytest`` and ``pytest-asyncio`` (``pip install zstack-core[testing]``); they
work in both pytest-asyncio modes.

PYTEST_DONT_REWRITE: a test module may import helpers from here *and* name this module in its
``pytest_plugins``; pytest would otherwise warn that it was imported before it could rewrite its
asserts (the helpers report failures with ``pytest.fail``, not ``assert``).
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.metadata
import inspect
import os
import site
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import pytest
import pytest_asyncio

from .errors import ErrorCode, ZStackError
from .messages import MessageReply
from .node import ManagementNode
from .plugins import ENTRY_POINT_GROUP
from .serialize import camel
from .units import parse_size

__all__ = [
    "ADMIN_PASSWORD",
    "TEST_LIBVIRT_URI",
    "Env",
    "EnvSpec",
    "FromNode",
    "NODE_LIBVIRT_URI",
    "NodeFactory",
    "Ref",
    "Step",
    "api",
    "assert_error",
    "build_env",
    "installed_plugins",
    "make_node",
    "overlay_venv",
    "private_test_driver",
    "zstack_node",
]

TEST_LIBVIRT_URI = "test:///default"
"""libvirt's test driver: a fake hypervisor in-process, no daemon, no root, nothing touched."""

ADMIN_PASSWORD = "zstack-test-admin"
"""The admin account's password on nodes :func:`make_node` starts (for tests that log in)."""


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------


def installed_plugins() -> dict[str, str]:
    """Entry-point name -> distribution of every installed ``zstack.plugins`` plugin."""
    out: dict[str, str] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        out.setdefault(ep.name, dist.name if dist else "")
    return out


def _unknown_plugin(name: str, installed: Mapping[str, str]) -> LookupError:
    close = difflib.get_close_matches(name, list(installed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(installed)) or "none"
    return LookupError(f"no installed zstack plugin is named {name!r}{hint} (installed: {known}). "
                       f"Install its distribution (pip install -e .) or pass the plugin module itself.")


class NodeFactory:
    """Starts management nodes for one test and stops them all afterwards (``make_node``)."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.nodes: list[ManagementNode] = []

    async def __call__(
        self,
        plugins: Iterable[str | object] = (),
        *,
        settings: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        libvirt_uri: str = TEST_LIBVIRT_URI,
        database_url: str | None = None,
        start: bool = True,
    ) -> ManagementNode:
        """A node with exactly ``plugins`` (plus the kernel's own), started unless ``start=False``.

        :param plugins: entry-point names of installed plugins (``"kvm"``) and/or plugin modules
            or objects with hookimpls, registered as given.
        :param settings: global-property overrides, ``{"bus.default_timeout": 5.0}``.
        :param config: a parsed ``zstack.toml`` mapping or the path of one (default: none).
        :param data_dir: where the node keeps its database (default: a new directory under the
            test's ``tmp_path``; pass the same one twice to restart a node on its data).
        :param libvirt_uri: ``node.libvirt_uri`` (default: the test driver).
        :param database_url: a database URL instead of the SQLite file in ``data_dir``.
        """
        names = [p for p in plugins if isinstance(p, str)]
        objects = [p for p in plugins if not isinstance(p, str)]
        installed = installed_plugins()
        for name in names:
            if name not in installed:
                raise _unknown_plugin(name, installed)
        if data_dir is None:
            data_dir = self.base_dir / f"node{len(self.nodes) + 1}"
        merged: dict[str, Any] = {"node.libvirt_uri": libvirt_uri, "identity.admin_password": ADMIN_PASSWORD}
        if database_url is not None:
            merged["database.url"] = database_url
        merged.update(settings or {})
        node = ManagementNode(
            config=config if config is not None else {},
            data_dir=data_dir,
            plugins=objects,
            # Entry points are how an installed plugin is really found; the unnamed ones are
            # disabled (never imported), so the node has exactly the plugins the test asked for.
            load_entry_points=bool(names),
            disabled_plugins=sorted(set(installed) - set(names)),
            settings=merged,
        )
        self.nodes.append(node)
        if start:
            await node.start()
        return node

    async def close(self) -> None:
        """Stop every node this factory started, newest first."""
        while self.nodes:
            await self.nodes.pop().stop()


@pytest.fixture
def _zstack_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep ``ZSTACK_*`` variables of the developer's shell (a disabled plugin, another data
    directory or database) out of the nodes a test starts."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)


@pytest_asyncio.fixture
async def make_node(tmp_path: Path, _zstack_clean_env: None) -> AsyncIterator[NodeFactory]:
    """``await make_node(plugins=["kvm", my_plugin])`` -> a started :class:`ManagementNode`.

    Each node gets its own SQLite database under ``tmp_path`` and the libvirt test driver; all
    are stopped when the test ends. See :meth:`NodeFactory.__call__` for the options.
    """
    factory = NodeFactory(tmp_path / "zstack")
    try:
        yield factory
    finally:
        await factory.close()


@pytest_asyncio.fixture
async def zstack_node(request: pytest.FixtureRequest, make_node: NodeFactory) -> ManagementNode:
    """One started node. Choose its plugins by indirect parametrization, with a list of plugins
    or a dict of :class:`NodeFactory` options::

        @pytest.mark.parametrize("zstack_node", [["kvm"]], indirect=True)
        async def test_zone(zstack_node): ...

    Without that, the node has every installed plugin (as ``zstack node start`` would).
    """
    param = getattr(request, "param", None)
    kwargs: dict[str, Any] = dict(param) if isinstance(param, Mapping) else {}
    if param is not None and not isinstance(param, Mapping):
        kwargs["plugins"] = list(param)
    kwargs.setdefault("plugins", sorted(installed_plugins()))
    return await make_node(**kwargs)


def overlay_venv(path: str | os.PathLike[str]) -> Path:
    """Create a virtual environment at ``path`` that also sees this interpreter's packages;
    return its ``python``.

    For testing how a plugin installs (``python -m pip install --no-deps --no-build-isolation
    ./zstack-foo``, then ``python -m zstack_core.cli plugins --json``) without touching the
    running environment and without a network: zstack-core, pytest and pip come from here, the
    plugin goes into the new environment. (``venv --system-site-packages`` would not do: from
    inside a virtual environment it exposes the base interpreter's packages, not this one's.)
    """
    root = Path(path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    # addsitedir, not a plain path line: it also runs this environment's .pth files, which is
    # how editable installs (the workspace's own packages) become importable.
    lines = [f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages() if Path(d).is_dir()]
    (Path(purelib) / "_zstack_overlay.pth").write_text("".join(lines))
    return python


# ---------------------------------------------------------------------------------------------
# Calling APIs and checking errors
# ---------------------------------------------------------------------------------------------


async def api(node: ManagementNode, api_name: str, params: Mapping[str, Any] | None = None, /, *,
              session_uuid: str | None = None, **kwargs: Any) -> Any:
    """Call ``api_name`` in-process and return its reply; raise ``ZStackError`` if it fails.

    Parameter names may be snake_case (``zone_uuid=``) or the wire's camelCase (``zoneUuid``);
    nested values are passed as they are (use camelCase inside them).
    """
    body = {camel(k): v for k, v in {**(params or {}), **kwargs}.items()}
    return await node.api_call(api_name, body, session_uuid=session_uuid)


def _matches(error: ErrorCode, expected: str) -> bool:
    # "QUOTA" matches QUOTA.1001; "SYS.1007" matches only itself.
    return error.code == expected if "." in expected else error.code.split(".", 1)[0] == expected


class assert_error:  # noqa: N801 - reads as a function at the call site, like pytest.raises
    """Assert that an API call fails with ``expected`` (a code ``"SYS.1007"`` or a prefix
    ``"QUOTA"``), and get its :class:`ErrorCode`.

    As a function, on an awaitable (or an already returned reply)::

        error = await assert_error("SYS.1007", api(node, "CreateZone", name=3))

    As a context manager (``async with`` or ``with``)::

        async with assert_error("QUOTA.1001", details="quota") as caught:
            await api(node, "CreateVmInstance", ...)
        assert caught.error.opaque["limit"] == 1

    :param caused_by: also require this code or prefix somewhere in the error's cause chain.
    :param details: require this text in the error's details.

    A failure that is not a ``ZStackError`` (a plain exception) is not caught: it is a bug, and
    the test fails with its traceback.
    """

    def __init__(self, expected: str, call: Awaitable[Any] | MessageReply | None = None, *,
                 caused_by: str | None = None, details: str | None = None) -> None:
        self.expected = expected
        self.call = call
        self.caused_by = caused_by
        self.details = details
        self._error: ErrorCode | None = None

    @property
    def error(self) -> ErrorCode:
        """The error that was raised (after the block or the awaited call)."""
        if self._error is None:
            raise AttributeError("no error was caught yet")
        return self._error

    def check(self, error: ErrorCode | None, what: str = "the call") -> ErrorCode:
        """Fail the test unless ``error`` is the expected one; return it."""
        if error is None:
            pytest.fail(f"expected {what} to fail with {self.expected}, but it succeeded", pytrace=False)
        chain = " <- ".join(e.code for e in error.chain())
        if not _matches(error, self.expected):
            pytest.fail(f"expected error {self.expected}, got {error} (codes: {chain})", pytrace=False)
        if self.caused_by is not None and not any(_matches(e, self.caused_by) for e in error.chain()[1:]):
            pytest.fail(f"expected {error.code} to be caused by {self.caused_by}, but its causes are: {chain}",
                        pytrace=False)
        if self.details is not None and self.details not in error.details:
            pytest.fail(f"expected {self.details!r} in the details of {error.code}, got {error.details!r}",
                        pytrace=False)
        self._error = error
        return error

    async def _await(self) -> ErrorCode:
        if self.call is None:
            raise TypeError("assert_error(code) without a call is a context manager: use `async with`")
        if isinstance(self.call, MessageReply):
            return self.check(self.call.error)
        try:
            result = await self.call
        except ZStackError as exc:
            return self.check(exc.error)
        return self.check(result.error if isinstance(result, MessageReply) else None)

    def __await__(self) -> Any:
        return self._await().__await__()

    def _exit(self, exc: BaseException | None) -> bool:
        if exc is None:
            self.check(None, "the block")
        if isinstance(exc, ZStackError):
            self.check(exc.error, "the block")
            return True
        return False

    async def __aenter__(self) -> assert_error:
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        return self._exit(exc)

    def __enter__(self) -> assert_error:
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        return self._exit(exc)


# ---------------------------------------------------------------------------------------------
# Environments (ZStack's test EnvSpec)
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Ref:
    """A value taken from an earlier step's result: ``Ref("zone")`` is its ``uuid``,
    ``Ref("host", "cluster_uuid")`` another attribute."""

    step: str
    attr: str = "uuid"


@attrs.frozen
class FromNode:
    """A value computed from the node when the environment is built: ``fn(node)``, which may
    be a coroutine function (the node's libvirt URI, a path in its data directory)."""

    fn: Callable[[ManagementNode], Any]


@attrs.define(kw_only=True)
class Step:
    """One API call of an environment: its result is kept as ``env[name]``.

    ``params`` may hold :class:`Ref` and :class:`FromNode` values (also inside lists),
    resolved just before the call. ``result`` names the reply attribute to keep
    (``inventory``); ``keep=False`` runs the call without keeping anything (an attach).
    """

    name: str
    api: str
    params: dict[str, Any] = attrs.field(factory=dict)
    result: str = "inventory"
    keep: bool = True


async def _resolve(value: Any, env: Env, node: ManagementNode, step: str) -> Any:
    if isinstance(value, Ref):
        if value.step not in env:
            raise KeyError(f"step {step!r} refers to {value.step!r}, which no earlier step built "
                           f"(built so far: {', '.join(env) or 'nothing'})")
        return getattr(env[value.step], value.attr)
    if isinstance(value, FromNode):
        result = value.fn(node)
        return await result if inspect.isawaitable(result) else result
    if isinstance(value, list):
        return [await _resolve(v, env, node, step) for v in value]
    if isinstance(value, dict):
        return {k: await _resolve(v, env, node, step) for k, v in value.items()}
    return value


class Env(dict[str, Any]):
    """What :func:`build_env` built, by step name; also readable as attributes (``env.vm``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"this environment has no {name!r} (it has: {', '.join(self) or 'nothing'})") from None


NODE_LIBVIRT_URI = FromNode(lambda node: node.properties["node.libvirt_uri"])
"""The node's ``node.libvirt_uri`` (the test driver under :func:`make_node`)."""


def private_test_driver(path: str | os.PathLike[str], *, cpus: int = 4, memory: int | str = "2G") -> str:
    """Write a libvirt test-driver definition of one host at ``path``; return its URI
    (``test:///<path>``). Each such URI is a separate fake hypervisor, so a test can add several
    hosts (``test:///default`` is one host per process, and a node refuses to add it twice)."""
    memory_kib = parse_size(memory) // 1024
    Path(path).write_text(
        "<node>\n"
        f"  <cpu><mhz>2000</mhz><model>i686</model><active>{cpus}</active><nodes>1</nodes>"
        f"<sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>\n"
        f"  <memory>{memory_kib}</memory>\n"
        "</node>\n")
    return f"test://{Path(path).resolve()}"


def _data_path(*parts: str) -> FromNode:
    return FromNode(lambda node: str(node.data_dir.joinpath(*parts)))


def _blank_image(key: str, size: int) -> FromNode:
    """A raw image file of ``size`` zero bytes (sparse) in the node's data directory: enough for
    a VM that boots nothing, which is all the test driver (or a 64 MiB test guest) needs."""

    def make(node: ManagementNode) -> Awaitable[str]:
        path = node.data_dir / "env-images" / f"{key}.raw"

        def write() -> str:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                f.truncate(size)
            return str(path)

        return asyncio.to_thread(write)

    return FromNode(make)


class EnvSpec:
    """An ordered list of API calls that builds a test environment (ZStack's test ``EnvSpec``).

    The resource methods add the calls of one resource each, named by their first argument and
    wired to the resources added before them by name::

        spec = (EnvSpec().zone().cluster().host()
                .primary_storage().l2_network().l3_network().image()
                .vm(memory_size="64M"))
        env = await build_env(node, spec)
        env.vm.state == "Running"; env.vm.vm_nics[0].ip

    Every step is optional: ``EnvSpec().zone().cluster().host().vm(image=None, l3_networks=())``
    needs only the compute plugin. Extra keyword arguments are API parameters (snake_case or
    camelCase) and override the defaults. :meth:`step` adds any other API call.
    """

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        self.steps: list[Step] = list(steps)

    def step(self, name: str, api: str, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> EnvSpec:
        """Call ``api`` with ``params``/``kwargs`` (snake_case or camelCase) and keep the reply's
        ``inventory`` as ``name``."""
        return self.add(Step(name=name, api=api, params={**(params or {}), **kwargs}))

    def add(self, step: Step) -> EnvSpec:
        """Append ``step`` (use a :class:`Step` to keep another reply attribute than ``inventory``)."""
        if step.keep and any(s.name == step.name and s.keep for s in self.steps):
            raise ValueError(f"this spec already has a step named {step.name!r}")
        self.steps.append(step)
        return self

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    # -- compute (zstack-kvm) ---------------------------------------------------------------------

    def zone(self, key: str = "zone", /, **params: Any) -> EnvSpec:
        """``CreateZone``."""
        return self.step(key, "CreateZone", {"name": key, **params})

    def cluster(self, key: str = "cluster", /, *, zone: str = "zone", **params: Any) -> EnvSpec:
        """``CreateCluster`` in the zone of step ``zone``."""
        return self.step(key, "CreateCluster", {"name": key, "zone_uuid": Ref(zone), **params})

    def host(self, key: str = "host", /, *, cluster: str = "cluster", url: Any = NODE_LIBVIRT_URI,
             **params: Any) -> EnvSpec:
        """``AddKVMHost`` on libvirt ``url`` (default: the node's ``node.libvirt_uri``)."""
        return self.step(key, "AddKVMHost", {"name": key, "cluster_uuid": Ref(cluster), "url": url, **params})

    def vm(self, key: str = "vm", /, *, image: str | None = "image", l3_networks: Sequence[str] = ("l3",),
           cpu_num: int = 1, memory_size: int | str = "64M", **params: Any) -> EnvSpec:
        """``CreateVmInstance`` from step ``image`` with a NIC on each of ``l3_networks``
        (``image=None, l3_networks=()`` for a VM of compute alone)."""
        body: dict[str, Any] = {"name": key, "cpu_num": cpu_num, "memory_size": parse_size(memory_size)}
        if image is not None:
            body["image_uuid"] = Ref(image)
        if l3_networks:
            body["l3_network_uuids"] = [Ref(l3) for l3 in l3_networks]
        return self.step(key, "CreateVmInstance", {**body, **params})

    # -- storage (zstack-storage) -----------------------------------------------------------------

    def primary_storage(self, key: str = "primary_storage", /, *, zone: str = "zone",
                        clusters: Sequence[str] = ("cluster",), url: Any = None, **params: Any) -> EnvSpec:
        """``AddLocalPrimaryStorage`` (default directory: under the node's data directory),
        attached to ``clusters``."""
        url = url if url is not None else _data_path("env-primary-storage", key)
        self.step(key, "AddLocalPrimaryStorage", {"name": key, "zone_uuid": Ref(zone), "url": url, **params})
        for cluster in clusters:
            self.add(Step(name=key, api="AttachPrimaryStorageToCluster", keep=False,
                          params={"primary_storage_uuid": Ref(key), "cluster_uuid": Ref(cluster)}))
        return self

    def image(self, key: str = "image", /, *, url: Any = None, format: str = "raw", size: int | str = "1M",
              **params: Any) -> EnvSpec:
        """``AddImage`` from ``url`` (default: a blank raw image of ``size`` made for the test)."""
        url = url if url is not None else _blank_image(key, parse_size(size))
        return self.step(key, "AddImage", {"name": key, "url": url, "format": format, **params})

    # -- network (zstack-network) -----------------------------------------------------------------

    def l2_network(self, key: str = "l2", /, *, zone: str = "zone", clusters: Sequence[str] = ("cluster",),
                   physical_interface: str = "eth0", vlan: int | None = None, **params: Any) -> EnvSpec:
        """``CreateL2NoVlanNetwork`` (or ``CreateL2VlanNetwork`` with ``vlan``), attached to ``clusters``."""
        body: dict[str, Any] = {"name": key, "zone_uuid": Ref(zone), "physical_interface": physical_interface}
        if vlan is not None:
            body["vlan"] = vlan
        self.step(key, "CreateL2VlanNetwork" if vlan is not None else "CreateL2NoVlanNetwork", {**body, **params})
        for cluster in clusters:
            self.add(Step(name=key, api="AttachL2NetworkToCluster", keep=False,
                          params={"l2_network_uuid": Ref(key), "cluster_uuid": Ref(cluster)}))
        return self

    def l3_network(self, key: str = "l3", /, *, l2: str = "l2", cidr: str | None = "192.168.100.0/24",
                   **params: Any) -> EnvSpec:
        """``CreateL3Network`` on step ``l2``, with an IP range of every host address of ``cidr``
        but the gateway (kept as ``<key>_ip_range``; ``cidr=None`` for none)."""
        self.step(key, "CreateL3Network", {"name": key, "l2_network_uuid": Ref(l2), **params})
        if cidr is not None:
            self.step(f"{key}_ip_range", "AddIpRangeByNetworkCidr", l3_network_uuid=Ref(key), network_cidr=cidr)
        return self


async def build_env(node: ManagementNode, spec: EnvSpec | Sequence[Step], *,
                    session_uuid: str | None = None) -> Env:
    """Run ``spec``'s steps in order on ``node`` through its public APIs; return the results.

    A failing step re-raises its ``ZStackError`` with a note naming the step, so
    ``assert_error`` still sees the API's own error code.
    """
    env = Env()
    for step in spec:
        params = await _resolve(step.params, env, node, step.name)
        try:
            reply = await api(node, step.api, params, session_uuid=session_uuid)
        except ZStackError as exc:
            exc.add_note(f"while building the environment: step {step.name!r} ({step.api})")
            raise
        if step.keep:
            env[step.name] = getattr(reply, step.result) if step.result else reply
    return env
