"""Fixtures of the reliability and security tests.

``cloud``: a node with every installed service (compute, storage, network) on a private
libvirt test-driver host (``test:///<tmp>/driver.xml``: what it holds is this test's alone),
with a zone, cluster, host, local primary storage, L2/L3 network with an IP range, and a small
image, all made through public APIs. ``cloud.vm()`` creates VMs on it.

``pg_server``: a PostgreSQL 15 server of this package's own (the shared ``postgres_url`` of
tests/conftest.py cannot be stopped and started by one test without breaking the others), with
``stop()``/``start()`` for the database-outage test.

Marks: ``heavy`` (the 100-VM kill -9 test on a real libvirtd, which runs only with
``ZSTACK_RUN_KILL9_100=1``, and the 10,000-request load test, which CI runs: the ones to
deselect with ``-m 'not heavy'`` while iterating) and
``libvirtd`` (needs a real libvirtd with QEMU).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import ManagementNode
from zstack_core.testing import EnvSpec, build_env

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN_PASSWORD = "reliability-admin-password"
FAST_CONFIGS = {
    ("kvm", "host.pingInterval"): 0.2,
    ("kvm", "host.maxReconnectInterval"): 1.0,
    ("kvm", "vm.syncInterval"): 0.5,
    ("kvm", "vm.stopTimeout"): 0.5,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "heavy: minutes of work (100 real VMs, 10,000 HTTP calls); deselect with "
                                       "-m 'not heavy' while iterating")
    config.addinivalue_line("markers", "libvirtd: needs a real libvirtd with QEMU (the `libvirtd` fixture)")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``ZSTACK_*`` variable leaks in from the shell; the CLI's session file stays in tmp_path."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


def driver_xml(path: Path, cpus: int = 8, memory_mib: int = 16384) -> str:
    """A private libvirt test-driver host of that size: ``test:///path``."""
    path.write_text(textwrap.dedent(f"""\
        <node>
          <cpu><mhz>2000</mhz><model>i686</model><active>{cpus}</active><nodes>1</nodes>
            <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
          <memory>{memory_mib * 1024}</memory>
        </node>
        """))
    return f"test://{path}"


@attrs.define
class Cloud:
    """A node and the resources made for it (``env.zone``, ``env.host``, ``env.l3``...)."""

    node: ManagementNode
    env: Any
    data_dir: Path
    count: int = 0

    async def call(self, api: str, params: dict[str, Any] | None = None, /, **kwargs: Any) -> Any:
        return await self.node.api_call(api, params, **kwargs)

    async def vm(self, name: str | None = None, *, image: bool = True, l3: bool = True, stopped: bool = False,
                 data_disk_sizes: list[int] | None = None) -> Any:
        self.count += 1
        params: dict[str, Any] = {"name": name or f"vm{self.count}", "cpuNum": 1, "memorySize": 64 << 20}
        if image:
            params["imageUuid"] = self.env.image.uuid
        if l3:
            params["l3NetworkUuids"] = [self.env.l3.uuid]
        if stopped:
            params["strategy"] = "CreateStopped"
        if data_disk_sizes:
            params["dataDiskSizes"] = data_disk_sizes
        return (await self.call("CreateVmInstance", params)).inventory


def cloud_spec(host_url: str) -> EnvSpec:
    return (EnvSpec().zone().cluster().host(url=host_url).primary_storage().l2_network()
            .l3_network(cidr="10.20.0.0/24").image(size="1M"))


async def start_cloud_node(data_dir: Path, **settings: Any) -> ManagementNode:
    node = ManagementNode(data_dir=data_dir, config={},
                          settings={"identity.admin_password": ADMIN_PASSWORD, **settings})
    await node.start()
    for (category, name), value in FAST_CONFIGS.items():
        await node.configs.update(category, name, value)
    return node


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    data_dir = tmp_path / "node"
    url = driver_xml(tmp_path / "driver.xml")
    node = await start_cloud_node(data_dir, **{"node.libvirt_uri": url})
    try:
        env = await build_env(node, cloud_spec(url))
        yield Cloud(node=node, env=env, data_dir=data_dir)
    finally:
        await node.stop()


# -- a PostgreSQL server this package may stop and start -----------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class PgServer:
    url: str
    data: Path
    log: Path
    options: str
    as_user: list[str]

    def _ctl(self, *args: str) -> None:
        result = subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {result.stdout}{result.stderr}")

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: clients are disconnected, the server is gone."""
        self._ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._ctl("-l", str(self.log), "-o", self.options, "-w", "-t", "60", "start")

    def new_database(self, name: str, password: str = "") -> str:
        """A new empty database; its URL (with ``password`` in it: trust authentication
        ignores it, so a test can show a URL with a password is never shown)."""
        port = self.url.rsplit(":", 1)[1].split("/")[0]
        subprocess.run([*self.as_user, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "postgres",
                        name], check=True, capture_output=True, timeout=60)
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{port}/{name}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A throwaway PostgreSQL 15 cluster (trust auth on loopback), stopped and removed at the end."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="zstack-rel-pg-"))
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    server = PgServer(url=f"postgresql://postgres@127.0.0.1:{port}/zstack", data=base / "data", log=base / "server.log",
                      options=f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", as_user=as_user)
    init = subprocess.run([*as_user, str(PG_BIN / "initdb"), "-D", str(server.data), "-U", "postgres", "-A", "trust",
                           "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
    try:
        server.start()
        subprocess.run([*as_user, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "zstack"], check=True, capture_output=True, timeout=60)
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:
            pass
        shutil.rmtree(base, ignore_errors=True)
