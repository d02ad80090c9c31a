"""Plugins are found through the ``zstack.plugins`` entry points, or given explicitly, and can be
disabled by name (``zstack.toml``, ``ZSTACK_DISABLE_PLUGINS``) or all at once
(``ZSTACK_DISABLE_PLUGIN_AUTOLOAD``)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import pytest

from zstack_core import ManagementNode, NodeStartError, Service, hookimpl

from .conftest import MakeDist, plugin_names, plugin_services

INSTALLED = {"kvm": ("zstack-kvm", "compute"), "storage": ("zstack-storage", "storage"),
             "network": ("zstack-network", "network")}

FOO_SOURCE = """
    from zstack_core import Service, hookimpl

    class FooService(Service):
        id = "foo"

    @hookimpl
    def zstack_services(node):
        return [FooService()]
"""


def test_installed_distributions_are_discovered(data_dir: Path) -> None:
    node = ManagementNode(data_dir=data_dir)
    node.inspect()
    for ep, (dist, service_id) in INSTALLED.items():
        info = node.plugins.infos[ep]
        assert info.distribution == dist
        assert info.version == importlib.metadata.version(dist)
        assert info.module == f"zstack_{ep}.plugin"
        assert "zstack_services" in info.hooks
        assert not info.disabled
        assert node.service_owner[service_id] == ep


async def test_installed_services_start_and_stop(data_dir: Path) -> None:
    async with ManagementNode(data_dir=data_dir) as node:
        assert node.state == "Running"
        assert {"compute", "storage", "network"} <= plugin_services(node)
        assert all(node.bus.has_service(sid) for sid in ("compute", "storage", "network"))
    assert node.state == "Stopped"


async def test_throwaway_distribution_is_discovered(make_dist: MakeDist, data_dir: Path) -> None:
    module = make_dist("zstack-foo", "1.0", "foo", FOO_SOURCE)
    async with ManagementNode(data_dir=data_dir) as node:
        info = node.plugins.infos["foo"]
        assert (info.distribution, info.version, info.module) == ("zstack-foo", "1.0", module)
        assert info.hooks == ["zstack_services"]
        assert node.service_owner["foo"] == "foo"
        assert node.bus.has_service("foo")
        assert "zstack-foo 1.0" in info.describe()


class ExplicitService(Service):
    id = "explicit"


class ExplicitPlugin:
    @hookimpl
    def zstack_services(self, node: ManagementNode) -> Sequence[Service]:
        return [ExplicitService()]


async def test_explicit_registration_without_entry_points(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-foo", "1.0", "foo", FOO_SOURCE)  # installed, but must not be loaded
    async with ManagementNode(plugins=[ExplicitPlugin()], load_entry_points=False, data_dir=data_dir) as node:
        assert plugin_names(node) == ["ExplicitPlugin"]
        info = node.plugins.infos["ExplicitPlugin"]
        assert info.distribution is None and "registered explicitly" in info.describe()
        assert info.module == f"{__name__}.ExplicitPlugin"
        assert plugin_services(node) == {"explicit"}
        assert node.service_owner["explicit"] == "ExplicitPlugin"


async def test_explicit_plugins_beside_entry_points(data_dir: Path) -> None:
    async with ManagementNode(plugins=[ExplicitPlugin()], data_dir=data_dir) as node:
        assert {"kvm", "storage", "network", "ExplicitPlugin"} <= set(node.plugins.infos)
        assert plugin_services(node) == {"compute", "storage", "network", "explicit"}


async def test_disabled_in_zstack_toml(data_dir: Path) -> None:
    (data_dir / "zstack.toml").write_text('[plugins]\ndisabled = ["kvm", "storage"]\n')
    async with ManagementNode(data_dir=data_dir) as node:
        assert node.plugins.infos["kvm"].disabled and node.plugins.infos["storage"].disabled
        assert not node.plugins.infos["network"].disabled
        assert [i.name for i in node.plugins.active() if i.name in plugin_names(node)] == ["network"]
        assert plugin_services(node) == {"network"}
        assert node.plugins.infos["kvm"].hooks == []


async def test_disabled_in_config_given_by_path(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('[plugins]\ndisabled = ["network"]\n')
    async with ManagementNode(config=config, data_dir=data_dir) as node:
        assert "network" not in node.services
        assert {"compute", "storage"} <= plugin_services(node)


async def test_disabled_by_environment(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGINS", "kvm, network")
    async with ManagementNode(data_dir=data_dir) as node:
        assert plugin_services(node) == {"storage"}
        assert node.plugins.infos["kvm"].disabled and node.plugins.infos["network"].disabled


async def test_config_and_environment_disable_together(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    (data_dir / "zstack.toml").write_text('[plugins]\ndisabled = ["kvm"]\n')
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGINS", "storage")
    async with ManagementNode(data_dir=data_dir) as node:
        assert plugin_services(node) == {"network"}


async def test_explicit_plugin_disabled_by_name(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGINS", "ExplicitPlugin")
    async with ManagementNode(plugins=[ExplicitPlugin()], load_entry_points=False, data_dir=data_dir) as node:
        assert plugin_services(node) == set()
        assert "ExplicitPlugin" not in node.plugins.infos


async def test_disabling_a_broken_plugin_lets_the_node_start(make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch,
                                                             data_dir: Path) -> None:
    make_dist("zstack-broken", "0.1", "broken", "raise RuntimeError('cannot import me')\n")
    with pytest.raises(NodeStartError, match="broken"):
        await ManagementNode(data_dir=data_dir).start()
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGINS", "broken")
    async with ManagementNode(data_dir=data_dir) as node:
        assert node.plugins.infos["broken"].disabled
        assert node.plugins.infos["broken"].distribution == "zstack-broken"


@pytest.mark.parametrize("value", ["1", "true", "yes"])
async def test_autoload_disabled_by_environment(value: str, make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch,
                                                data_dir: Path) -> None:
    make_dist("zstack-broken", "0.1", "broken", "raise RuntimeError('must not be imported')\n")
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGIN_AUTOLOAD", value)
    async with ManagementNode(plugins=[ExplicitPlugin()], data_dir=data_dir) as node:
        assert plugin_names(node) == ["ExplicitPlugin"]
        assert plugin_services(node) == {"explicit"}


async def test_autoload_not_disabled_by_other_values(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGIN_AUTOLOAD", "0")
    async with ManagementNode(data_dir=data_dir) as node:
        assert {"kvm", "storage", "network"} <= set(node.plugins.infos)
