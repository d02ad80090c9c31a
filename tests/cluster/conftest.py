"""Fixtures for the cluster tests: a fresh database per test on the session's PostgreSQL (and a
throwaway MariaDB server), and in-process management nodes sharing it, each serving HTTP on a
free loopback port.

``mariadb_server`` duplicates the one in ``tests/persistence/conftest.py`` (fixtures of another
test package are not visible here); it belongs in ``tests/conftest.py`` beside ``postgres_url``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from zstack_core import ManagementNode

from .echo_plugin import EchoPlugin

try:
    import pymysql
except ImportError:  # pragma: no cover
    pymysql = None

FAST_BEAT = 0.25
"""Heartbeat interval of the in-process tests (seconds); detection takes 3 of them."""


@pytest.fixture(autouse=True)
def no_zstack_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)


def new_pg_database(server_url: str) -> tuple[str, str]:
    name = f"zs_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}", name


def drop_pg_database(server_url: str, name: str) -> None:
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        conn.close()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the session's PostgreSQL server."""
    url, name = new_pg_database(postgres_url)
    try:
        yield url
    finally:
        drop_pg_database(postgres_url, name)





def _mariadb(server_url: str, sql: str) -> None:
    host, port = server_url.removeprefix("mysql://root@").split(":")
    conn = pymysql.connect(host=host, port=int(port), user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def mariadb_url(mariadb_server: str) -> Iterator[str]:
    """An empty database of its own on the session's MariaDB server."""
    name = f"zs_{uuid.uuid4().hex[:12]}"
    _mariadb(mariadb_server, f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield f"{mariadb_server}/{name}"
    finally:
        _mariadb(mariadb_server, f"DROP DATABASE IF EXISTS {name}")


class InProcessCluster:
    """Management nodes in this process on one database, each with its own data directory and
    an :class:`EchoPlugin`; stopped (gracefully, in reverse) at the end of the test."""

    def __init__(self, db_url: str, base: Path) -> None:
        self.db_url = db_url
        self.base = base
        self.nodes: list[ManagementNode] = []
        self.echo: dict[str, EchoPlugin] = {}

    async def start(self, name: str, *, http: bool = True, settings: dict[str, Any] | None = None,
                    beat: float | None = FAST_BEAT) -> ManagementNode:
        plugin = EchoPlugin()
        node = ManagementNode(plugins=[plugin], load_entry_points=False, data_dir=self.base / name,
                              settings={"database.url": self.db_url, **(settings or {})})
        await node.start()
        self.nodes.append(node)
        self.echo[node.uuid] = plugin
        if beat is not None and node.configs.get("managementServer", "node.heartbeatInterval") != beat:
            await node.configs.update("managementServer", "node.heartbeatInterval", beat)
        if http:
            await node.start_http("127.0.0.1", 0)
        return node

    async def settle(self) -> None:
        """One heartbeat on every running node, twice: everyone has seen everyone."""
        for _ in range(2):
            for node in self.nodes:
                if node.state == "Running" and node.cluster.beating:
                    await node.cluster.beat()

    def owned_by(self, node: ManagementNode, n: int = 1) -> list[str]:
        """``n`` new resource UUIDs that ``node`` owns (as every node's ring says)."""
        out: list[str] = []
        while len(out) < n:
            candidate = uuid.uuid4().hex
            if node.cluster.owns(candidate):
                out.append(candidate)
        return out

    @staticmethod
    async def crash(node: ManagementNode) -> None:
        """What ``kill -9`` leaves behind, in-process: the node stops beating and answering
        (its HTTP server closes) but leaves its row and jobs as they were."""
        task = node.cluster._loop_task  # noqa: SLF001 - simulating a crash needs the inside
        assert task is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if node.http is not None:
            await node.http.stop()
            node.http = None

    async def stop(self) -> None:
        for plugin in self.echo.values():
            plugin.service.release.set()
        for node in reversed(self.nodes):
            await node.stop()


@pytest.fixture
async def pg_cluster(pg_url: str, tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    """In-process nodes on a PostgreSQL database of their own."""
    cluster = InProcessCluster(pg_url, tmp_path)
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture(params=["postgresql", "mariadb"])
async def db_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    """In-process nodes on a database of their own, on PostgreSQL and on MariaDB."""
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
    cluster = InProcessCluster(url, tmp_path)
    try:
        yield cluster
    finally:
        await cluster.stop()


async def eventually(check: Any, timeout: float, what: str, poll: float = 0.02) -> float:
    """Wait until ``check()`` (sync or async) is true; return the seconds it took."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(poll)
