"""Global configs: declared by plugins, stored in the database, changed through the APIs.

Each test runs on SQLite and on PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from zstack_core import ManagementNode, ZStackError, hookimpl
from zstack_core.globalconfig import GlobalConfig, GlobalConfigVO, Range

from .conftest import every_backend, new_node
from .plugins import CONFIGS, LabPlugin


async def config_row(node: ManagementNode, category: str, name: str) -> dict[str, Any]:
    """The stored row, read in the database thread."""

    def read() -> dict[str, Any]:
        row = GlobalConfigVO.get((GlobalConfigVO.category == category) & (GlobalConfigVO.name == name))
        return {"value": row.value, "default_value": row.default_value, "updated_at": row.updated_at}

    return await node.db.run(read)


async def all_config_rows(node: ManagementNode) -> list[tuple[Any, ...]]:
    def read() -> list[tuple[Any, ...]]:
        return sorted((r.category, r.name, r.value, r.updated_at) for r in GlobalConfigVO.select())

    return await node.db.run(read)


async def test_declared_configs_get_their_defaults_in_the_database(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        for cfg in CONFIGS:
            row = await config_row(node, cfg.category, cfg.name)
            assert row["value"] == row["default_value"] == GlobalConfig.to_text(cfg.default)
        assert node.configs.get("lab", "worker.count") == 4
        assert node.configs.get("lab", "enabled") is True
        assert node.configs.get("lab", "reservedMemory") == 512 * 1024**2  # size configs read as bytes


@every_backend
async def test_update_persists_across_a_node_restart(db_url: str, data_dir: Path) -> None:
    lab = LabPlugin()
    async with new_node(db_url, data_dir, lab) as node:
        reply = await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value="12")
        assert reply.inventory.value == "12" and reply.inventory.default_value == "4"
        await node.api_call("UpdateGlobalConfig", category="lab", name="enabled", value=False)
        await node.api_call("UpdateGlobalConfig", category="lab", name="reservedMemory", value="1G")
        await node.api_call("UpdateGlobalConfig", category="lab", name="ratio", value=0.25)
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        assert node.configs.get("lab", "ratio") == 0.25
        assert node.configs.get("lab", "worker.count") == 12
        assert node.configs.get("lab", "enabled") is False
        assert node.configs.get("lab", "reservedMemory") == 1024**3
        assert (await config_row(node, "lab", "worker.count"))["value"] == "12"


async def test_a_config_new_to_the_database_gets_its_default_and_old_values_are_kept(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin(configs=[CONFIGS[0]])) as node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=7)
        assert not await node.db.run(lambda: GlobalConfigVO.select().where(GlobalConfigVO.name == "mode").exists())
    # The next version of the plugin declares more configs.
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        assert node.configs.get("lab", "worker.count") == 7  # not reset to the default
        assert node.configs.get("lab", "mode") == "fast"
        assert (await config_row(node, "lab", "mode"))["value"] == "fast"


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("worker.count", 17, "above the maximum 16"),               # Range
    ("worker.count", 0, "below the minimum 1"),                 # Range
    ("worker.count", "many", "invalid literal"),                # not an integer
    ("worker.count", 2.5, "expected an integer"),
    ("mode", "turbo", "not one of fast, safe, off"),            # Choices
    ("host.prefix", "Node_1", "does not match [a-z]+-[0-9]+"),  # Regex
    ("batch.size", 12, "12 is not a power of two"),             # Custom
    ("enabled", "perhaps", "expected true or false"),
    ("reservedMemory", "lots", "size"),
    ("ratio", "1.5", "above the maximum 1"),
    ("ratio", "nan", "expected a finite number"),
    ("ratio", "-inf", "expected a finite number"),
])
async def test_validators_refuse_bad_values_and_change_nothing(db_url: str, data_dir: Path, name: str,
                                                               value: Any, reason: str) -> None:
    lab = LabPlugin()
    async with new_node(db_url, data_dir, lab) as node:
        before_rows = await all_config_rows(node)
        before = node.configs.get("lab", name)
        with pytest.raises(ZStackError) as refused:
            await node.api_call("UpdateGlobalConfig", category="lab", name=name, value=value)
        error = refused.value.error
        assert error.code == "SYS.1007"
        assert f"lab/{name}" in error.details  # names the config...
        assert reason in error.details  # ...and says what is wrong with the value
        assert error.opaque["field"] == "value"
        assert await all_config_rows(node) == before_rows  # no row changed, not even updated_at
        assert node.configs.get("lab", name) == before
        assert lab.changes == []  # a refused value is not announced


@every_backend
async def test_update_listeners_hear_a_change_after_it_is_stored(db_url: str, data_dir: Path) -> None:
    seen_in_db: list[str] = []

    class Listener:
        """Reads the row back from inside the listener: the change is stored before it is told."""

        def __init__(self) -> None:
            self.node: ManagementNode | None = None

        @hookimpl
        async def zstack_global_config_changed(self, category: str, name: str, new_value: Any) -> None:
            assert self.node is not None
            seen_in_db.append((await config_row(self.node, category, name))["value"])

    lab, listener = LabPlugin(), Listener()
    node = new_node(db_url, data_dir, lab, listener)
    listener.node = node
    async with node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="mode", value="safe")
        assert lab.changes == [("lab", "mode", "fast", "safe", None)]
        assert seen_in_db == ["safe"]
        await node.api_call("ResetGlobalConfig", category="lab", name="mode")
        assert lab.changes[-1] == ("lab", "mode", "safe", "fast", None)


async def test_reset_puts_the_default_back(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="batch.size", value=64)
        assert node.configs.get("lab", "batch.size") == 64
        reply = await node.api_call("ResetGlobalConfig", category="lab", name="batch.size")
        assert reply.inventory.value == "8"
        assert (await config_row(node, "lab", "batch.size"))["value"] == "8"
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        assert node.configs.get("lab", "batch.size") == 8


async def test_get_global_config_options(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        options = (await node.api_call("GetGlobalConfigOptions", category="lab", name="worker.count")).options
        assert (options.type, options.default_value, options.description) == ("int", "4", "workers per oven")
        assert options.validators == [{"type": "Range", "min": 1, "max": 16}]
        assert options.resource_types == []
        mode = (await node.api_call("GetGlobalConfigOptions", category="lab", name="mode")).options
        assert mode.validators == [{"type": "Choices", "validValues": ["fast", "safe", "off"]}]
        memory = (await node.api_call("GetGlobalConfigOptions", category="lab", name="reservedMemory")).options
        assert (memory.type, memory.default_value, memory.resource_types) == ("size", "512M", ["Host", "Cluster", "Zone"])
        custom = (await node.api_call("GetGlobalConfigOptions", category="lab", name="batch.size")).options
        assert custom.validators == [{"type": "Custom", "description": "a power of two"}]


@every_backend
async def test_query_global_config_with_conditions(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=9)
        reply = await node.api_call("QueryGlobalConfig", conditions=[
            {"name": "category", "op": "=", "value": "lab"},
            {"name": "name", "op": "like", "value": "%.%"}], sortBy="name")
        assert [i.name for i in reply.inventories] == ["batch.size", "host.prefix", "worker.count"]
        changed = await node.api_call("QueryGlobalConfig", conditions=[
            {"name": "category", "op": "=", "value": "lab"},
            {"name": "value", "op": "!=", "value": "4"},
            {"name": "defaultValue", "op": "=", "value": "4"}])
        assert [(i.name, i.value) for i in changed.inventories] == [("worker.count", "9")]
        count = await node.api_call("QueryGlobalConfig", conditions=[
            {"name": "name", "op": "in", "value": ["mode", "enabled", "nothing"]}], count=True)
        assert count.total == 2 and count.inventories == []


async def test_unknown_config_names_the_closest_one(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        before = await all_config_rows(node)
        with pytest.raises(ZStackError) as refused:
            await node.api_call("UpdateGlobalConfig", category="lab", name="worker.cnt", value=3)
        assert refused.value.error.code == "SYS.1004"
        assert "no global config lab/worker.cnt; did you mean lab/worker.count?" in refused.value.error.details
        assert await all_config_rows(node) == before


async def test_a_stored_value_a_newer_validator_refuses_falls_back_to_the_default(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=16)
    stricter = GlobalConfig(category="lab", name="worker.count", type="int", default=4, validators=[Range(1, 8)])
    async with new_node(db_url, data_dir, LabPlugin(configs=[stricter])) as node:
        assert node.configs.get("lab", "worker.count") == 4
        assert (await config_row(node, "lab", "worker.count"))["value"] == "16"  # kept, not destroyed


@every_backend
async def test_concurrent_updates_leave_memory_and_database_agreeing(db_url: str, data_dir: Path) -> None:
    lab = LabPlugin()
    async with new_node(db_url, data_dir, lab) as node:
        for _ in range(8):
            await asyncio.gather(*[node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=v)
                                   for v in range(1, 17)])
            stored = int((await config_row(node, "lab", "worker.count"))["value"])
            assert node.configs.get("lab", "worker.count") == stored
            assert lab.changes[-1][3] == stored  # the last change announced is the one that stuck
            # every announced change follows the one before it
            values = [c[3] for c in lab.changes]
            assert [c[2] for c in lab.changes[1:]] == values[:-1]
