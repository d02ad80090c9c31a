"""System tags: patterns with tokens declared by plugins, validated on create APIs, stored per
resource, read back as tokens, and used to query resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zstack_core import ManagementNode, ZStackError
from zstack_core.ownership import ADMIN_ACCOUNT_UUID, AccountResourceRefVO, owner_of_sync
from zstack_core.tags import PatternedSystemTag, SystemTagVO

from .conftest import every_backend, new_node
from .plugins import HOST_HVM, HOST_QEMU_IMG, THING_COLOR, THING_SIZE, ClusterVO, HostVO, LabPlugin, ThingVO, ZoneVO


async def tag_rows(node: ManagementNode) -> list[tuple[str, str, str]]:
    return await node.db.run(lambda: sorted((r.resource_uuid, r.resource_type, r.tag) for r in SystemTagVO.select()))


async def thing_names(node: ManagementNode) -> list[str]:
    return await node.db.run(lambda: sorted(t.name for t in ThingVO.select()))


def test_patterns_and_tokens() -> None:
    assert THING_SIZE.token_names == ["width", "height"]
    assert THING_SIZE.tokens("size::10x20") == {"width": "10", "height": "20"}
    assert HOST_QEMU_IMG.tokens("qemu-img::version::7.2.0") == {"version": "7.2.0"}
    assert HOST_QEMU_IMG.tokens("qemu-img::version::") is None  # a token is never empty
    assert HOST_QEMU_IMG.tokens("qemu-img::version::7::2") is None  # nor contains '::'
    assert HOST_HVM.instantiate(flag="vmx") == "hvm::vmx"
    with pytest.raises(ValueError, match="needs tokens"):
        THING_SIZE.instantiate(width=3)
    with pytest.raises(ValueError, match="contains '::'"):
        HOST_HVM.instantiate(flag="a::b")
    # Regex metacharacters in a pattern are literal.
    dotted = PatternedSystemTag(pattern="a.b::{x}", resource_type="Thing")
    assert dotted.matches("a.b::1") and not dotted.matches("axb::1")


@every_backend
async def test_create_api_stores_valid_tags_and_tokens_read_back(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        thing = (await node.api_call("CreateThing", name="t1", systemTags=["color::red", "size::3x4"])).inventory
        assert await node.tags.tags(thing.uuid) == ["color::red", "size::3x4"]
        # written in the same transaction: the owner (no session: the admin account)
        assert await node.db.run(owner_of_sync, thing.uuid) == ADMIN_ACCOUNT_UUID
        assert await node.tags.tokens(thing.uuid, THING_COLOR) == {"color": "red"}
        assert await node.tags.tokens(thing.uuid, THING_SIZE) == {"width": "3", "height": "4"}
        assert await node.tags.tokens(thing.uuid, HOST_HVM) is None
        assert await tag_rows(node) == [(thing.uuid, "Thing", "color::red"), (thing.uuid, "Thing", "size::3x4")]
        # replace: one tag of a pattern per resource (a fact that changed)
        await node.tags.replace(thing.uuid, "Thing", THING_COLOR, "color::blue")
        assert await node.tags.tokens(thing.uuid, THING_COLOR) == {"color": "blue"}
        assert sorted(await node.tags.tags(thing.uuid)) == ["color::blue", "size::3x4"]
        # the same tag twice is stored once
        await node.tags.create(thing.uuid, "Thing", ["size::3x4"])
        assert len(await tag_rows(node)) == 2


@pytest.mark.parametrize(("tags", "message"), [
    (["colour::red"], "system tag 'colour::red' matches no declared pattern for Thing; declared: color::{color}, "
                      "size::{width}x{height}"),
    (["color::red", "hvm::vmx"], "system tag 'hvm::vmx' belongs to Host resources, not Thing"),
    (["color::"], "system tag 'color::' matches no declared pattern for Thing"),
    ([""], "system tag #0 must be a non-empty string"),
])
async def test_create_api_refuses_bad_tags_and_writes_nothing(db_url: str, data_dir: Path, tags: list[str],
                                                              message: str) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        with pytest.raises(ZStackError) as refused:
            await node.api_call("CreateThing", name="t1", systemTags=tags)
        assert refused.value.error.code == "SYS.1007"
        assert message in refused.value.error.details
        assert refused.value.error.opaque["field"] == f"$.systemTags[{len(tags) - 1}]"
        assert await thing_names(node) == [] and await tag_rows(node) == []


async def test_a_failed_create_leaves_neither_the_resource_nor_its_tags(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        with pytest.raises(ZStackError) as failed:
            await node.api_call("CreateThing", name="t1", fail=True, systemTags=["color::red"])
        assert failed.value.error.code == "LAB.1000"
        assert await thing_names(node) == [] and await tag_rows(node) == []
        assert await node.db.run(lambda: AccountResourceRefVO.select().where(
            AccountResourceRefVO.resource_type == "Thing").count()) == 0


async def test_system_tag_apis(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        thing = (await node.api_call("CreateThing", name="t1")).inventory

        def make_host() -> str:
            zone = ZoneVO.create(name="z")
            cluster = ClusterVO.create(name="c", zone_uuid=zone.uuid)
            return str(HostVO.create(name="h", cluster_uuid=cluster.uuid, zone_uuid=zone.uuid).uuid)

        host_uuid = await node.db.atomic(make_host)
        created = (await node.api_call("CreateSystemTag", resourceUuid=host_uuid, tag="hvm::svm")).inventory
        assert (created.resource_uuid, created.resource_type, created.tag) == (host_uuid, "Host", "hvm::svm")
        with pytest.raises(ZStackError) as wrong_type:
            await node.api_call("CreateSystemTag", resourceUuid=thing.uuid, tag="hvm::svm")
        assert "belongs to Host resources, not Thing" in wrong_type.value.error.details
        with pytest.raises(ZStackError) as no_resource:
            await node.api_call("CreateSystemTag", resourceUuid="f" * 32, tag="color::red")
        assert no_resource.value.error.code == "SYS.1007" and f"no resource {'f' * 32}" in no_resource.value.error.details

        found = await node.api_call("QuerySystemTag", conditions=[{"name": "resourceUuid", "op": "=", "value": host_uuid}])
        assert [t.uuid for t in found.inventories] == [created.uuid]
        await node.api_call("DeleteSystemTag", uuid=created.uuid)
        assert await tag_rows(node) == []


@every_backend
async def test_query_resources_by_tag(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        tagged: dict[str, list[str]] = {"red": ["color::red", "size::1x1"], "red-big": ["color::red", "size::9x9"],
                                        "Blue": ["color::Blue"], "plain": []}
        for name, tags in tagged.items():
            await node.api_call("CreateThing", name=name, systemTags=tags)

        async def names(op: str, value: Any, *more: dict[str, Any]) -> list[str]:
            reply = await node.api_call("QueryThing", conditions=[{"name": "__systemTag__", "op": op, "value": value},
                                                                  *more], sortBy="name")
            return [t.name for t in reply.inventories]

        assert await names("=", "color::red") == ["red", "red-big"]
        assert await names("!=", "color::red") == ["Blue", "plain"]  # things without that tag
        assert await names("in", ["size::1x1", "size::9x9"]) == ["red", "red-big"]
        assert await names("not in", ["size::1x1", "size::9x9"]) == ["Blue", "plain"]
        assert await names("like", "color::%") == ["Blue", "red", "red-big"]
        assert await names("like", "COLOR::b%") == ["Blue"]  # like ignores case
        assert await names("not like", "size::%") == ["Blue", "plain"]
        assert await names("=", "color::red", {"name": "name", "op": "like", "value": "%big"}) == ["red-big"]
        with pytest.raises(ZStackError) as refused:
            await names(">", "color::red")
        assert refused.value.error.code == "SYS.1007"
        assert "__systemTag__ supports =, !=, in, not in, like, not like" in refused.value.error.details
