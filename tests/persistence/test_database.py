"""The database layer under failure: a server that drops the node's connections, and values a
column cannot hold. Errors reach the user as ErrorCodes, and the node recovers by itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pymysql
import pytest

from zstack_core import ManagementNode, ZStackError

from .conftest import every_backend, new_node
from .plugins import LabPlugin, ThingVO


def drop_connections(db_url: str) -> int:
    """Make the server close every connection to the node's database (as a restart would)."""
    database = db_url.rsplit("/", 1)[1]
    if db_url.startswith("postgresql"):
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
                return len(cur.fetchall())
        finally:
            conn.close()
    host, port = db_url.removeprefix("mysql://root@").split("/")[0].split(":")
    conn = pymysql.connect(host=host, port=int(port), user="root", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                        (database,))
            ids = [row[0] for row in cur.fetchall()]
            for connection_id in ids:
                cur.execute(f"KILL {int(connection_id)}")
            return len(ids)
    finally:
        conn.close()


def server_only(db_url: str) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite has no server to drop connections or refuse long values")


@every_backend
async def test_node_reconnects_after_the_server_dropped_its_connections(db_url: str, data_dir: Path) -> None:
    server_only(db_url)
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=2)
        assert drop_connections(db_url) >= 1
        # The first call after the drop may fail, with an ErrorCode that says why...
        try:
            await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=3)
        except ZStackError as exc:
            assert exc.error.code == "SYS.1006" and "database unavailable" in exc.error.details
            assert node.configs.get("lab", "worker.count") == 2  # the failed update changed nothing
        # ...and from then on every worker works again: reads, writes, transactions.
        for value in range(4, 14):
            await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=value)
            assert (await node.api_call("QueryGlobalConfig", conditions=[
                {"name": "name", "op": "=", "value": "worker.count"}])).inventories[0].value == str(value)
        await node.api_call("CreateThing", name="after", systemTags=["color::red"])


@every_backend
async def test_a_value_the_column_cannot_hold_is_an_invalid_argument(db_url: str, data_dir: Path) -> None:
    server_only(db_url)
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        with pytest.raises(ZStackError) as refused:
            await node.api_call("CreateThing", name="x" * 300)  # name is a varchar(255)
        assert refused.value.error.code == "SYS.1007"
        assert "the database refused a value" in refused.value.error.details
        assert await node.db.run(lambda: ThingVO.select().count()) == 0


@every_backend
async def test_overlong_system_tag_is_refused_on_every_backend(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        with pytest.raises(ZStackError) as refused:
            await node.api_call("CreateThing", name="t", systemTags=["color::" + "r" * 1100])
        assert refused.value.error.code == "SYS.1007"
        assert "system tag #0 is 1107 characters long; the limit is 1024" in refused.value.error.details
        assert await node.db.run(lambda: ThingVO.select().count()) == 0


async def test_in_memory_sqlite_database(data_dir: Path) -> None:
    """``sqlite:///:memory:`` works for throwaway embedded nodes (one worker, one connection)."""
    async with ManagementNode(data_dir=data_dir, load_entry_points=False, plugins=[LabPlugin()],
                              settings={"database.url": "sqlite:///:memory:"}) as node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=5)
        assert (await node.api_call("QueryGlobalConfig", conditions=[
            {"name": "name", "op": "=", "value": "worker.count"}])).inventories[0].value == "5"
    assert not (data_dir / "zstack.db").exists()


SCHEMA_UPGRADER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from persistence.plugins import LabPlugin
    from zstack_core import builtin
    from zstack_core.db import Database

    async def main():
        db = Database({url!r})
        registrations = [*builtin.zstack_models(), *LabPlugin().zstack_models()]
        print("ready", flush=True)
        sys.stdin.readline()  # every process starts at once
        try:
            done = await db.run(db.migrate, registrations)
            print("done", done["lab"], flush=True)
        except Exception as exc:
            print("failed", exc, flush=True)
        finally:
            db.close()

    asyncio.run(main())
""")


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_nodes_starting_together_create_the_schema_once(db_url: str) -> None:
    """Three nodes meet a fresh shared database at the same moment: one creates each plugin's
    schema, the others wait for it (a schema lock) and find it done, instead of failing on
    tables created under them."""
    script = SCHEMA_UPGRADER.format(tests=str(Path(__file__).resolve().parent.parent), url=db_url)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = sorted(proc.communicate(timeout=120)[0].strip() for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert outcomes == ["done (0, 1)", "done (1, 1)", "done (1, 1)"]
