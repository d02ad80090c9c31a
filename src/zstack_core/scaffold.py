"""``zstack plugin new <name>``: write a new plugin distribution that works on the first try.

The generated ``zstack-<name>/`` is a complete third-party plugin: a ``pyproject.toml`` with the
``zstack.plugins`` entry point, a package in a ``src/`` layout whose hookimpl module registers an
error-code space, a service with one API (``Get<Name>Status``) and two global configs, a README,
and ``tests/test_plugin.py`` written with :mod:`zstack_core.testing`. Install it with
``pip install -e ./zstack-<name>[test]`` and its tests pass as generated.
"""

from __future__ import annotations

import importlib.metadata
import re
import string
from pathlib import Path

from . import __version__
from .plugins import ENTRY_POINT_GROUP

__all__ = ["ScaffoldError", "PluginNames", "new_plugin"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The plugin cannot be generated as asked; the message says why and what to do."""


class PluginNames:
    """Every name derived from the plugin's short name (``load-balancer``)."""

    def __init__(self, name: str) -> None:
        name = name.strip().removeprefix("zstack-").removeprefix("zstack_")
        if not _NAME.match(name):
            raise ScaffoldError(f"invalid plugin name {name!r}: use lower-case letters, digits and single "
                                f"hyphens, starting with a letter (e.g. 'quota' or 'load-balancer')")
        self.name = name
        """The entry-point name, the service id and the global-config category."""
        self.distribution = f"zstack-{name}"
        self.package = f"zstack_{name.replace('-', '_')}"
        self.camel = "".join(part.capitalize() for part in name.split("-"))
        """``LoadBalancer``: in API and class names."""
        self.error_prefix = name.replace("-", "_").upper()
        self.api = f"Get{self.camel}Status"


def _core_requirement() -> str:
    # Plugins depend on the kernel's minor series: hookspecs may grow within it, never break.
    major, minor = (__version__.split(".") + ["0", "0"])[:2]
    return f"zstack-core>={major}.{minor},<{major}.{int(minor) + 1}"


# Templates use string.Template ($name) because the files they produce are full of braces.

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "A zstack-py plugin: $name."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["$core_requirement"]

[project.optional-dependencies]
test = ["zstack-core[testing]"]

# How the management node finds the plugin: `zstack plugins` lists it once it is installed.
[project.entry-points."zstack.plugins"]
$name = "$package.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
$package = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
filterwarnings = ["error"]
"""

INIT = '''\
"""$distribution: a zstack-py plugin."""

from .plugin import ${camel}Errors, ${camel}Service

__all__ = ["${camel}Errors", "${camel}Service"]
'''

PLUGIN = '''\
"""Hook implementations of $distribution.

The node finds this module through the ``zstack.plugins`` entry point ``$name`` and calls the
hooks below once at start-up: what they return is what the plugin registers. See the hook
reference for every other extension point.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from zstack_core import (
    APIMessage,
    APIReply,
    ApiRegistration,
    ErrorCodeSpace,
    ManagementNode,
    Service,
    handles,
    hookimpl,
)
from zstack_core.globalconfig import GlobalConfig, Regex

${camel}Errors = ErrorCodeSpace(
    prefix="$error_prefix",
    codes={
        "1000": "$name is disabled",
    },
)
"""The error codes this plugin owns: every failure it reports is $error_prefix.xxxx."""

ENABLED = GlobalConfig(category="$name", name="enabled", type="bool", default=True,
                       description="whether $api answers")
GREETING = GlobalConfig(category="$name", name="greeting", type="str", default="hello",
                        validators=[Regex(r"\\S.*")], description="what $api says; not blank")


@attrs.define(kw_only=True)
class API${api}Msg(APIMessage):
    """Ask the $name service how it is."""

    SERVICE_ID = "$name"
    API_NAME = "$api"


@attrs.define(kw_only=True)
class ${camel}Status:
    greeting: str
    services: int
    """How many services the node runs."""


@attrs.define(kw_only=True)
class API${api}Reply(APIReply):
    status: ${camel}Status | None = None


class ${camel}Service(Service):
    """The service of $distribution: handles $api."""

    id = "$name"

    @handles(API${api}Msg)
    async def status(self, msg: API${api}Msg) -> API${api}Reply:
        configs = self.node.configs
        if not configs.get(ENABLED.category, ENABLED.name):
            raise ${camel}Errors.exc("1000", "set global config $name/enabled to true to use $api")
        return API${api}Reply(status=${camel}Status(greeting=configs.get(GREETING.category, GREETING.name),
                                                     services=len(self.node.services)))


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [${camel}Errors]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [${camel}Service()]


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    return [ApiRegistration(message=API${api}Msg, route=("GET", "/v1/$name/status"))]


@hookimpl
def zstack_global_configs() -> Sequence[GlobalConfig]:
    return [ENABLED, GREETING]
'''

TEST = '''\
"""Tests of $distribution, each on a real management node with only this plugin loaded."""

from __future__ import annotations

from zstack_core.testing import NodeFactory, api, assert_error

pytest_plugins = ["zstack_core.testing"]


async def test_status(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["$name"])
    reply = await api(node, "$api")
    assert reply.status.greeting == "hello"
    assert reply.status.services == len(node.services)


async def test_greeting_is_a_global_config(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["$name"])
    await api(node, "UpdateGlobalConfig", category="$name", name="greeting", value="bonjour")
    assert (await api(node, "$api")).status.greeting == "bonjour"


async def test_blank_greeting_is_refused(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["$name"])
    await assert_error("SYS.1007", api(node, "UpdateGlobalConfig", category="$name", name="greeting", value=" "))
    assert (await api(node, "$api")).status.greeting == "hello"


async def test_disabled_is_an_error_code_of_this_plugin(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["$name"])
    await api(node, "UpdateGlobalConfig", category="$name", name="enabled", value=False)
    error = await assert_error("$error_prefix.1000", api(node, "$api"))
    assert "$name/enabled" in error.details


async def test_plugin_is_found_through_its_entry_point(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["$name"])
    info = node.plugins.infos["$name"]
    assert info.distribution == "$distribution"
    assert node.service_owner["$name"] == "$name"
'''

README = """\
# $distribution

A plugin for zstack-py management nodes: it adds the service `$name`
with the API `$api`, the error codes `$error_prefix.xxxx` and the global configs
`$name/enabled` and `$name/greeting`.

## Develop

```bash
pip install -e '.[test]'
zstack plugins          # lists $name with what it registers
pytest
```

`src/$package/plugin.py` holds the hook implementations; the node finds them through the
`zstack.plugins` entry point `$name` in `pyproject.toml`. The tests start a real management
node with only this plugin (`make_node(plugins=["$name"])` from `zstack_core.testing`).
"""


def new_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the distribution ``zstack-<name>/`` into ``directory``; return its path.

    Refuses (:class:`ScaffoldError`) an invalid name, the name of an installed plugin, and a
    target directory that exists and is not empty.
    """
    names = PluginNames(name)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=names.name):
        dist = getattr(ep, "dist", None)
        raise ScaffoldError(f"a plugin named {names.name!r} is already installed (distribution "
                            f"{dist.name if dist else ep.value}): entry-point names must be unique, choose another name")
    root = Path(directory) / names.distribution
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{root} already exists and is not empty")
    values = {**vars(names), "core_requirement": _core_requirement()}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"src/{names.package}/__init__.py": INIT,
        f"src/{names.package}/plugin.py": PLUGIN,
        f"src/{names.package}/py.typed": "",
        "tests/test_plugin.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(string.Template(template).substitute(values))
    return root
