"""Fixtures for the compute service's tests.

Fast tests run a node with the kernel and zstack-kvm only (storage and network disabled, so the
service is shown to work alone) against libvirt's test driver. ``cloud`` adds a zone, a cluster
and a host on ``test:///default``. End-to-end tests (``@pytest.mark.libvirtd``) use the shared
``libvirtd`` fixture of ``tests/conftest.py`` (a real libvirtd with QEMU).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import ManagementNode

SMALL_CONFIGS = {
    ("kvm", "host.pingInterval"): 0.1,
    ("kvm", "host.maxReconnectInterval"): 0.4,
    ("kvm", "vm.syncInterval"): 0.2,
    ("kvm", "vm.stopTimeout"): 0.5,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "libvirtd: needs a real libvirtd with QEMU (the `libvirtd` fixture)")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``ZSTACK_*`` variable leaks in from the developer's shell; data stays in tmp_path."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ZSTACK_NODE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ZSTACK_ADMIN_PASSWORD", "password")
    return data_dir


async def start_node(data_dir: Path, plugins: list[Any] | None = None, fast: bool = True,
                     others: bool = False) -> ManagementNode:
    """A running node with zstack-kvm (and ``plugins``); storage and network disabled unless
    ``others``. ``fast``: ping/sync intervals and stop timeouts made small."""
    node = ManagementNode(data_dir=data_dir, plugins=plugins or [],
                          disabled_plugins=[] if others else ["storage", "network"])
    await node.start()
    if fast:
        for (category, name), value in SMALL_CONFIGS.items():
            await node.configs.update(category, name, value)
    return node


@pytest.fixture
async def node(isolated_env: Path) -> AsyncIterator[ManagementNode]:
    n = await start_node(isolated_env)
    try:
        yield n
    finally:
        await n.stop()


@attrs.define
class Cloud:
    node: ManagementNode
    zone: Any
    cluster: Any
    host: Any

    async def call(self, api: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return await self.node.api_call(api, params, **kwargs)

    async def host_row(self, uuid: str | None = None) -> Any:
        return (await self.node.query.find("Host", [("uuid", "=", uuid or self.host.uuid)]))[0]

    async def vm(self, uuid: str) -> Any:
        return (await self.node.query.find("VmInstance", [("uuid", "=", uuid)]))[0]

    async def create_vm(self, name: str = "vm", cpu: int = 1, memory: int = 64 << 20, **kwargs: Any) -> Any:
        return (await self.call("CreateVmInstance", name=name, cpuNum=cpu, memorySize=memory, **kwargs)).inventory

    async def domains(self, host_uuid: str | None = None) -> dict[str, int]:
        """Domain name -> libvirt state, as the host's own connection sees them."""
        from zstack_core.header.messages import HostRunMsg

        def listing(conn: Any) -> dict[str, int]:
            return {d.name(): d.state()[0] for d in conn.listAllDomains()}

        reply = await self.node.bus.call_ok(HostRunMsg(host_uuid=host_uuid or self.host.uuid, fn=listing))
        return reply.result  # type: ignore[no-any-return]


async def make_cloud(node: ManagementNode, url: str = "test:///default") -> Cloud:
    zone = (await node.api_call("CreateZone", name="zone")).inventory
    cluster = (await node.api_call("CreateCluster", name="cluster", zoneUuid=zone.uuid)).inventory
    host = (await node.api_call("AddKVMHost", name="host", clusterUuid=cluster.uuid, url=url)).inventory
    return Cloud(node=node, zone=zone, cluster=cluster, host=host)


@pytest.fixture
async def cloud(node: ManagementNode) -> Cloud:
    return await make_cloud(node)


@pytest.fixture
def driver_xml(tmp_path: Path) -> Iterator[Any]:
    """``driver_xml(cpus, memory_mib) -> test:///path`` : a private test-driver host of that size."""
    count = iter(range(1000))

    def make(cpus: int = 4, memory_mib: int = 2048) -> str:
        path = tmp_path / f"driver{next(count)}.xml"
        path.write_text(textwrap.dedent(f"""\
            <node>
              <cpu><mhz>2000</mhz><model>i686</model><active>{cpus}</active><nodes>1</nodes>
                <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
              <memory>{memory_mib * 1024}</memory>
            </node>
            """))
        return f"test://{path}"

    yield make
