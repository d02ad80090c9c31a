"""Database I/O never runs on the event loop thread: every SQL statement a node executes, from
start-up (migrations, config load) through every kernel API to stop, is recorded with the thread
that ran it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest

from zstack_core import ApiJob

from .conftest import every_backend, new_node
from .plugins import ClusterVO, HostVO, LabPlugin, ZoneVO


@pytest.fixture
def sql_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """(thread name, SQL) of every statement any peewee database executes during the test."""
    seen: list[tuple[str, str]] = []
    original = peewee.Database.execute_sql

    def recording(self: peewee.Database, sql: str, params: Any = None) -> Any:
        seen.append((threading.current_thread().name, sql))
        return original(self, sql, params)

    monkeypatch.setattr(peewee.Database, "execute_sql", recording)
    yield seen


@every_backend
async def test_no_sql_on_the_event_loop_thread(db_url: str, data_dir: Path, sql_threads: list[tuple[str, str]]) -> None:
    loop_thread = threading.current_thread().name
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        def make_host() -> str:
            zone = ZoneVO.create(name="z")
            cluster = ClusterVO.create(name="c", zone_uuid=zone.uuid)
            return str(HostVO.create(name="h", cluster_uuid=cluster.uuid, zone_uuid=zone.uuid).uuid)

        host = await node.db.atomic(make_host)
        await node.api_call("UpdateGlobalConfig", category="lab", name="worker.count", value=3)
        await node.api_call("ResetGlobalConfig", category="lab", name="worker.count")
        await node.api_call("GetGlobalConfigOptions", category="lab", name="worker.count")
        await node.api_call("QueryGlobalConfig", conditions=[{"name": "category", "op": "=", "value": "lab"}])
        await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory", resourceUuid=host, value="1G")
        await node.api_call("GetResourceConfig", category="lab", name="reservedMemory", resourceUuid=host)
        await node.api_call("DeleteResourceConfig", category="lab", name="reservedMemory", resourceUuid=host)
        thing = (await node.api_call("CreateThing", name="t", systemTags=["color::red"])).inventory
        tag = (await node.api_call("CreateSystemTag", resourceUuid=host, tag="hvm::vmx")).inventory
        await node.api_call("QuerySystemTag", conditions=[{"name": "resourceUuid", "op": "=", "value": host}])
        await node.api_call("DeleteSystemTag", uuid=tag.uuid)
        await node.api_call("QueryThing", conditions=[{"name": "__systemTag__", "op": "=", "value": "color::red"}],
                            replyWithCount=True)
        await node.query.find("Thing", [("uuid", "=", thing.uuid)])
        job = await node.submit_api(node.api.build("BakeCake", {"flavour": "lemon"}))
        assert isinstance(job, ApiJob)
        await node.api.wait_job(job.id)
    assert len(sql_threads) > 30  # the recording saw the node's statements
    on_loop = [sql for thread, sql in sql_threads if thread == loop_thread]
    assert on_loop == []
    assert {thread for thread, _ in sql_threads if not thread.startswith("zstack-db")} == set()  # only its workers
