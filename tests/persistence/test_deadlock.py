"""Transactions that the server aborts as deadlock victims (MariaDB's 1213, PostgreSQL's 40P01
and 40001) run again, as ZStack's ``@DeadlockAutoRestart`` does: the server rolled the whole
transaction back, so running it again is safe, and two nodes (or two database threads of one)
writing the same rows in a different order is no error a user should see."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import peewee
import pytest

from zstack_core.db import is_conflict

from .conftest import every_backend, new_node
from .plugins import LabPlugin, ThingVO


@every_backend
async def test_two_transactions_that_deadlock_both_succeed(db_url: str, data_dir: Path) -> None:
    """Two transactions update the same two rows in opposite orders, each waiting for the other
    after its first update: a real deadlock on the server, one of them its victim. Both end
    written, and the victim was run again once."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite runs one transaction at a time (one database thread): nothing to deadlock")
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        await node.db.run(lambda: [ThingVO.create(uuid=u, name="new") for u in ("a" * 32, "b" * 32)])
        both_hold_one = threading.Barrier(2, timeout=30)
        attempts: list[str] = []

        def update(first: str, second: str, name: str) -> None:
            attempts.append(name)
            ThingVO.update(name=name).where(ThingVO.uuid == first).execute()
            if attempts.count(name) == 1:  # the first attempt waits until the other holds its row
                both_hold_one.wait()
            ThingVO.update(name=name).where(ThingVO.uuid == second).execute()

        before = node.db.conflicts_retried
        await asyncio.gather(node.db.atomic(update, "a" * 32, "b" * 32, "one"),
                             node.db.atomic(update, "b" * 32, "a" * 32, "two"))
        assert node.db.conflicts_retried - before == 1
        assert sorted(attempts) == ["one", "one", "two"] or sorted(attempts) == ["one", "two", "two"]
        victim = max(set(attempts), key=attempts.count)  # it ran twice, the second time last
        names = await node.db.run(lambda: {t.name for t in ThingVO.select()})
        assert names == {victim}


def test_what_counts_as_a_conflict() -> None:
    """Only the server's "run it again" answers; a lost connection or a constraint is not one."""
    import psycopg2.errors
    import pymysql

    assert is_conflict(peewee.OperationalError(pymysql.err.OperationalError(1213, "Deadlock found")))
    assert not is_conflict(peewee.OperationalError(pymysql.err.OperationalError(2013, "Lost connection")))
    assert not is_conflict(peewee.OperationalError(pymysql.err.OperationalError(1205, "Lock wait timeout")))
    assert is_conflict(peewee.OperationalError(psycopg2.errors.DeadlockDetected("deadlock detected")))
    assert is_conflict(peewee.OperationalError(psycopg2.errors.SerializationFailure("could not serialize")))
    assert not is_conflict(peewee.OperationalError(psycopg2.errors.AdminShutdown("terminating connection")))
    assert not is_conflict(peewee.OperationalError("database is locked"))
    assert not is_conflict(peewee.IntegrityError(pymysql.err.IntegrityError(1062, "Duplicate entry")))
