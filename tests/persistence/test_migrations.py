"""Plugin schemas: created on a fresh database, recorded, upgraded by numbered migrations, never
downgraded, and rolled back when a migration fails.

The "widgets" plugin exists in three versions. v1 has ``widget(uuid, name)``; v2 adds ``size``;
v3 adds ``colour`` (filled in for existing rows by the migration) and an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import peewee
import pytest
from playhouse.migrate import SchemaMigrator, migrate

from zstack_core import ManagementNode, NodeStartError, hookimpl
from zstack_core.db import Migration, ModelRegistration, ResourceModel, SchemaVersion

from .conftest import every_backend, new_node


class WidgetV1(ResourceModel):
    name = peewee.CharField(max_length=64)

    class Meta:
        table_name = "widget"


class WidgetV3(ResourceModel):
    name = peewee.CharField(max_length=64)
    size = peewee.IntegerField(default=0)
    colour = peewee.CharField(max_length=16, default="grey")

    class Meta:
        table_name = "widget"
        indexes = ((("colour",), False),)


applied: list[int] = []
"""Versions of migrations run, in order (reset by each test)."""


def add_size(migrator: SchemaMigrator, db: peewee.Database) -> None:
    applied.append(2)
    migrate(migrator.add_column("widget", "size", peewee.IntegerField(default=0)))


def add_colour(migrator: SchemaMigrator, db: peewee.Database) -> None:
    applied.append(3)
    migrate(migrator.add_column("widget", "colour", peewee.CharField(max_length=16, default="grey")),
            migrator.add_index("widget", ("colour",), False))
    # A data migration too: widgets that existed before colours were blue.
    db.execute_sql("UPDATE widget SET colour = 'blue'")


def break_after_adding(migrator: SchemaMigrator, db: peewee.Database) -> None:
    """Adds a column, then fails: the column must not survive."""
    applied.append(2)
    migrate(migrator.add_column("widget", "size", peewee.IntegerField(default=0)))
    db.execute_sql("UPDATE widget SET no_such_column = 1")


MIGRATIONS = [Migration(version=2, apply=add_size, description="add size"),
              Migration(version=3, apply=add_colour, description="add colour")]


class Widgets:
    """The widgets plugin at some version."""

    def __init__(self, model: type[ResourceModel], migrations: Sequence[Migration] = ()) -> None:
        self.model = model
        self.migrations = list(migrations)

    @hookimpl
    def zstack_models(self) -> Sequence[ModelRegistration]:
        return [ModelRegistration(name="widgets", models=[self.model], migrations=self.migrations)]


V1 = Widgets(WidgetV1)
V3 = Widgets(WidgetV3, MIGRATIONS)


@pytest.fixture(autouse=True)
def reset_applied() -> None:
    applied.clear()


async def versions(node: ManagementNode) -> dict[str, tuple[int, Any]]:
    def read() -> dict[str, tuple[int, Any]]:
        return {r.plugin: (r.version, r.updated_at) for r in SchemaVersion.select()}

    return await node.db.run(read)


async def columns(node: ManagementNode) -> list[str]:
    return await node.db.run(lambda: sorted(c.name for c in node.db.db.get_columns("widget")))


@every_backend
async def test_fresh_database_gets_the_current_schema_and_records_its_version(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, V3) as node:
        recorded = await versions(node)
        assert recorded["widgets"][0] == 3
        assert recorded["zstack_core"][0] == 1  # the kernel's own schema is recorded the same way
        assert applied == []  # a new database is created as the models are now, no migrations
        assert await columns(node) == ["colour", "created_at", "name", "size", "updated_at", "uuid"]


async def test_second_start_does_nothing(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, V3) as node:
        first = await versions(node)
        await node.db.run(lambda: WidgetV3.create(name="w1", size=3))
    async with new_node(db_url, data_dir, V3) as node:
        assert await versions(node) == first  # not even rewritten (same updated_at)
        assert applied == []
        assert await node.db.run(lambda: [(w.name, w.size) for w in WidgetV3.select()]) == [("w1", 3)]


@every_backend
async def test_upgrade_v1_to_v3_keeps_data_and_adds_columns(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, V1) as node:
        assert (await versions(node))["widgets"][0] == 1
        assert await columns(node) == ["created_at", "name", "updated_at", "uuid"]
        await node.db.run(lambda: [WidgetV1.create(name=n) for n in ("a", "b")])
    async with new_node(db_url, data_dir, V3) as node:
        assert applied == [2, 3]
        assert (await versions(node))["widgets"][0] == 3
        assert await columns(node) == ["colour", "created_at", "name", "size", "updated_at", "uuid"]
        rows = await node.db.run(lambda: sorted((w.name, w.size, w.colour) for w in WidgetV3.select()))
        assert rows == [("a", 0, "blue"), ("b", 0, "blue")]
        await node.db.run(lambda: WidgetV3.create(name="c", size=5))  # new rows take the new defaults
        indexes = await node.db.run(lambda: [i.columns for i in node.db.db.get_indexes("widget")])
        assert ["colour"] in indexes
    applied.clear()
    async with new_node(db_url, data_dir, V3) as node:  # and the upgraded database is stable
        assert applied == []
        assert await node.db.run(lambda: WidgetV3.get(WidgetV3.name == "c").colour) == "grey"


async def test_upgrade_one_step_at_a_time(db_url: str, data_dir: Path) -> None:
    v2 = Widgets(WidgetV1, MIGRATIONS[:1])  # the v2 plugin (its model class is irrelevant here)
    async with new_node(db_url, data_dir, V1):
        pass
    async with new_node(db_url, data_dir, v2) as node:
        assert applied == [2] and (await versions(node))["widgets"][0] == 2
    async with new_node(db_url, data_dir, V3) as node:
        assert applied == [2, 3] and (await versions(node))["widgets"][0] == 3


@every_backend
async def test_database_of_a_newer_schema_stops_start_up(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, V3) as node:
        await node.db.run(lambda: WidgetV3.create(name="keep me"))
    node = new_node(db_url, data_dir, V1)
    with pytest.raises(NodeStartError) as stopped:
        await node.start()
    message = str(stopped.value)
    assert "'widgets'" in message and "version 3" in message and "this node's 1" in message
    assert "upgrade the widgets plugin" in message
    assert node.state == "Failed" and node.db is None  # the database is closed again
    async with new_node(db_url, data_dir, V3) as node:  # and it was not touched
        assert (await versions(node))["widgets"][0] == 3
        assert await node.db.run(lambda: [w.name for w in WidgetV3.select()]) == ["keep me"]


@every_backend
async def test_a_failing_migration_rolls_back_and_stops_start_up(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, V1) as node:
        await node.db.run(lambda: WidgetV1.create(name="a"))
    broken = Widgets(WidgetV3, [Migration(version=2, apply=break_after_adding, description="add size"),
                                MIGRATIONS[1]])
    node = new_node(db_url, data_dir, broken)
    with pytest.raises(NodeStartError) as stopped:
        await node.start()
    message = str(stopped.value)
    assert "'widgets'" in message and "migration 2 (add size)" in message and "no_such_column" in message
    assert applied == [2]  # migration 3 never ran
    assert "the schema stays at version 1" in message
    async with new_node(db_url, data_dir, V1) as node:
        assert applied == [2]
        assert (await versions(node))["widgets"][0] == 1
        assert await node.db.run(lambda: [w.name for w in WidgetV1.select()]) == ["a"]
        if db_url.startswith("mysql"):
            # MySQL/MariaDB commit each DDL statement: the column stays, and the error says so.
            assert "cannot roll back DDL" in message
            assert "size" in await columns(node)
            return
        # Transactional DDL (PostgreSQL, SQLite): the column migration 2 added is gone.
        assert await columns(node) == ["created_at", "name", "updated_at", "uuid"]
    # Once the plugin is fixed, the same database upgrades.
    applied.clear()
    async with new_node(db_url, data_dir, V3) as node:
        assert applied == [2, 3]
        assert (await versions(node))["widgets"][0] == 3


async def test_two_plugins_claiming_one_schema_stop_start_up(db_url: str, data_dir: Path) -> None:
    class Impostor(Widgets):
        pass

    with pytest.raises(NodeStartError) as stopped:
        await new_node(db_url, data_dir, V1, Impostor(WidgetV1)).start()
    assert "schema 'widgets' is claimed by both plugin" in str(stopped.value)
    assert "'Widgets'" in str(stopped.value) and "'Impostor'" in str(stopped.value)


@pytest.mark.parametrize(("migrations", "problem"), [
    ([Migration(version=2, apply=add_size), Migration(version=2, apply=add_colour)],
     "schema 'widgets': more than one migration to version 2"),
    ([Migration(version=1, apply=add_size)],
     "schema 'widgets': migrations are numbered from 2 (version 1 is the schema as first released), got [1]"),
])
async def test_badly_numbered_migrations_stop_start_up_naming_the_plugin(tmp_path: Path, data_dir: Path,
                                                                         migrations: list[Migration],
                                                                         problem: str) -> None:
    with pytest.raises(NodeStartError) as stopped:
        await new_node(f"sqlite:///{tmp_path / 'z.db'}", data_dir, Widgets(WidgetV3, migrations)).start()
    assert "Widgets" in str(stopped.value) and "zstack_models" in str(stopped.value)
    assert problem in str(stopped.value)
