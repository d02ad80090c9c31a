"""Fixtures for the persistence tests: every database-backed test runs on SQLite, on a real
PostgreSQL server (the session's throwaway cluster from ``tests/conftest.py``) and on a real
MariaDB server (``mariadb_server`` below), each test with a database of its own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

try:
    import pymysql
except ImportError:  # pragma: no cover - PyMySQL is a dev dependency
    pymysql = None

from zstack_core import ManagementNode

BACKENDS = ["sqlite", "postgresql"]
"""Where every database-backed test runs (``db_url``)."""
ALL_BACKENDS = [*BACKENDS, "mariadb"]
every_backend = pytest.mark.parametrize("db_url", ALL_BACKENDS, indirect=True)
"""MariaDB too, for the tests that show what it must do (its DDL is slow, so not all of them)."""


@pytest.fixture(autouse=True, scope="session")
def no_zstack_environment() -> Iterator[None]:
    """No ``ZSTACK_*`` variable leaks in from the developer's shell."""
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("ZSTACK_"):
                mp.delenv(var)
        yield


def _create_pg_database(server_url: str) -> tuple[str, str]:
    """A new empty database on the session's PostgreSQL server: (url, name).

    ``LC_COLLATE 'C'``: strings sort by code point, as SQLite sorts them, so query tests can
    check ``sortBy`` on text against Python's ``sorted``.
    """
    name = f"zs_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C.UTF-8' "
                        "STRATEGY FILE_COPY")  # faster than WAL_LOG for a small template
    finally:
        conn.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}", name


def _drop_pg_database(server_url: str, name: str) -> None:
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        conn.close()





def _mariadb(server_url: str, sql: str) -> None:
    host, port = server_url.removeprefix("mysql://root@").split(":")
    conn = pymysql.connect(host=host, port=int(port), user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def database_url(backend: str, request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'zstack.db'}"
        return
    if backend == "mariadb":
        # utf8mb4_nopad_bin: '=' and sorting by code point, as on SQLite (the default collation
        # ignores case and trailing spaces in '=').
        server = request.getfixturevalue("mariadb_server")
        name = f"zs_{uuid.uuid4().hex[:12]}"
        _mariadb(server, f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
        try:
            yield f"{server}/{name}"
        finally:
            _mariadb(server, f"DROP DATABASE IF EXISTS {name}")
        return
    server = request.getfixturevalue("postgres_url")
    url, name = _create_pg_database(server)
    try:
        yield url
    finally:
        _drop_pg_database(server, name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: an SQLite file, or a fresh PostgreSQL database."""
    yield from database_url(request.param, request, tmp_path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def new_node(db_url: str, data_dir: Path, *plugins: object, **settings: Any) -> ManagementNode:
    """A node with only the kernel and ``plugins``, on ``db_url``."""
    return ManagementNode(plugins=plugins, load_entry_points=False, data_dir=data_dir,
                          settings={"database.url": db_url, **settings})
