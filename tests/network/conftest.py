"""Fixtures of the network tests.

``net_node``: a node running only zstack-core and zstack-network (what needs no hosts: "core +
network alone must start and serve its APIs"). ``api``: call an API by name with JSON-like
arguments and get the reply (errors raise ``ZStackError``). Interfaces and bridges the tests make
on this machine are named ``zs-test…`` / ``br_zs-test…`` and removed afterwards.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import zstack_network.plugin
from zstack_core import ManagementNode


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "libvirtd: needs a real libvirtd + QEMU (the libvirtd fixture)")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``ZSTACK_*`` variable leaks in from the shell; the node's data stays in tmp_path."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ZSTACK_NODE_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def data_dir(isolated_env: Path) -> Path:
    return isolated_env


@pytest.fixture
async def net_node(data_dir: Path) -> AsyncIterator[ManagementNode]:
    """A node running only the kernel and zstack-network."""
    async with ManagementNode(plugins=[zstack_network.plugin], load_entry_points=False, data_dir=data_dir) as node:
        yield node


Api = Callable[..., Awaitable[Any]]


@pytest.fixture
def api(net_node: ManagementNode) -> Api:
    async def call(api_name: str, /, **params: Any) -> Any:
        return await net_node.api_call(api_name, params)

    return call


ZONE = "0" * 31 + "1"
"""Without compute there are no zones to check; any UUID serves."""


async def make_l3(api: Api, cidr: str = "10.10.0.0/24", physical_interface: str = "eth0", vlan: int | None = None,
                  strategy: str | None = None, zone: str = ZONE) -> tuple[Any, Any, Any]:
    """An L2 network, an L3 network on it and one range covering ``cidr``: (l2, l3, range)."""
    if vlan is None:
        l2 = (await api("CreateL2NoVlanNetwork", name="l2", zoneUuid=zone, physicalInterface=physical_interface)).inventory
    else:
        l2 = (await api("CreateL2VlanNetwork", name="l2", zoneUuid=zone, physicalInterface=physical_interface,
                        vlan=vlan)).inventory
    params: dict[str, Any] = {"name": "l3", "l2NetworkUuid": l2.uuid}
    if strategy:
        params["ipAllocationStrategy"] = strategy
    l3 = (await api("CreateL3Network", **params)).inventory
    rng = (await api("AddIpRangeByNetworkCidr", l3NetworkUuid=l3.uuid, networkCidr=cidr)).inventory
    return l2, l3, rng
