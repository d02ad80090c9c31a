"""Resource configs: a global config marked overridable, set per zone, cluster or host and read
through the chain host -> cluster -> zone -> global (ZStack's ``kvm/reservedMemory``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zstack_core import ManagementNode, ZStackError
from zstack_core.globalconfig import ResourceConfigVO

from .conftest import every_backend, new_node
from .plugins import ClusterVO, DiskVO, HostVO, LabPlugin, ZoneVO

MiB = 1024**2


async def make_lab(node: ManagementNode) -> dict[str, str]:
    """A zone with a cluster with a host, a second host in the same cluster, and a disk."""

    def write() -> dict[str, str]:
        zone = ZoneVO.create(name="zone1")
        cluster = ClusterVO.create(name="cluster1", zone_uuid=zone.uuid)
        host = HostVO.create(name="host1", cluster_uuid=cluster.uuid, zone_uuid=zone.uuid)
        sibling = HostVO.create(name="host2", cluster_uuid=cluster.uuid, zone_uuid=zone.uuid)
        disk = DiskVO.create(host_uuid=host.uuid)
        return {"zone": zone.uuid, "cluster": cluster.uuid, "host": host.uuid, "sibling": sibling.uuid,
                "disk": disk.uuid}

    return await node.db.atomic(write)


async def value_for(node: ManagementNode, resource_uuid: str) -> tuple[str, str]:
    """(value, source) as GetResourceConfig reports it."""
    inv = (await node.api_call("GetResourceConfig", category="lab", name="reservedMemory",
                               resourceUuid=resource_uuid)).inventory
    return inv.value, inv.source


async def override_rows(node: ManagementNode) -> list[tuple[Any, ...]]:
    def read() -> list[tuple[Any, ...]]:
        return sorted((r.resource_uuid, r.resource_type, r.value, r.updated_at) for r in ResourceConfigVO.select())

    return await node.db.run(read)


@every_backend
async def test_override_chain_host_cluster_zone_global(db_url: str, data_dir: Path) -> None:
    lab = LabPlugin()
    async with new_node(db_url, data_dir, lab) as node:
        r = await make_lab(node)
        chain = [r["host"], r["cluster"], r["zone"]]

        async def set_on(level: str, value: str) -> None:
            await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory",
                                resourceUuid=r[level], value=value)

        assert await value_for(node, r["host"]) == ("536870912", "global")
        await set_on("zone", "1G")
        assert await value_for(node, r["host"]) == (str(1024 * MiB), r["zone"])
        await set_on("cluster", "768M")
        assert await value_for(node, r["host"]) == (str(768 * MiB), r["cluster"])
        await set_on("host", "256M")
        assert await value_for(node, r["host"]) == (str(256 * MiB), "resource")
        assert node.configs.resolve("lab", "reservedMemory", chain) == 256 * MiB
        # The other host of the cluster reads the cluster's value, the cluster its own.
        assert await value_for(node, r["sibling"]) == (str(768 * MiB), r["cluster"])
        assert await value_for(node, r["cluster"]) == (str(768 * MiB), "resource")
        assert lab.changes[-1] == ("lab", "reservedMemory", None, 256 * MiB, r["host"])

    # Overrides survive a restart.
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        assert node.configs.resolve("lab", "reservedMemory", chain) == 256 * MiB

        # Deleting an override falls back one level at a time.
        reply = await node.api_call("DeleteResourceConfig", category="lab", name="reservedMemory", resourceUuid=r["host"])
        assert (reply.inventory.value, reply.inventory.source) == (str(768 * MiB), r["cluster"])
        await node.api_call("DeleteResourceConfig", category="lab", name="reservedMemory", resourceUuid=r["cluster"])
        assert await value_for(node, r["host"]) == (str(1024 * MiB), r["zone"])
        await node.api_call("DeleteResourceConfig", category="lab", name="reservedMemory", resourceUuid=r["zone"])
        assert await value_for(node, r["host"]) == (str(512 * MiB), "global")
        # Now a change of the global value reaches the host.
        await node.api_call("UpdateGlobalConfig", category="lab", name="reservedMemory", value="2G")
        assert node.configs.resolve("lab", "reservedMemory", chain) == 2048 * MiB
        assert await override_rows(node) == []


async def test_override_on_a_type_the_config_does_not_allow_is_refused(db_url: str, data_dir: Path) -> None:
    lab = LabPlugin()
    async with new_node(db_url, data_dir, lab) as node:
        r = await make_lab(node)
        with pytest.raises(ZStackError) as refused:
            await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory",
                                resourceUuid=r["disk"], value="1G")
        assert refused.value.error.code == "SYS.1007"
        assert ("global config lab/reservedMemory cannot be set on a Disk; it can be set on Host, Cluster, Zone"
                in refused.value.error.details)
        # A config that is not overridable at all.
        with pytest.raises(ZStackError) as not_overridable:
            await node.api_call("UpdateResourceConfig", category="lab", name="worker.count",
                                resourceUuid=r["host"], value=2)
        assert "cannot be set on a Host; it can be set on no resource type" in not_overridable.value.error.details
        with pytest.raises(ZStackError) as no_such:
            await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory",
                                resourceUuid="0" * 32, value="1G")
        assert no_such.value.error.code == "SYS.1007" and f"no resource {'0' * 32}" in no_such.value.error.details
        assert await override_rows(node) == []
        assert lab.changes == []


async def test_a_refused_override_leaves_the_old_one(db_url: str, data_dir: Path) -> None:
    lab = LabPlugin()
    async with new_node(db_url, data_dir, lab) as node:
        r = await make_lab(node)
        await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory",
                            resourceUuid=r["host"], value="300M")
        before = await override_rows(node)
        with pytest.raises(ZStackError) as refused:
            await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory",
                                resourceUuid=r["host"], value="three hundred")
        assert refused.value.error.code == "SYS.1007" and "lab/reservedMemory" in refused.value.error.details
        assert await override_rows(node) == before
        assert await value_for(node, r["host"]) == (str(300 * MiB), "resource")
        assert len(lab.changes) == 1


async def test_updating_an_override_replaces_it(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        r = await make_lab(node)
        for value in ("100M", "200M", "300M"):
            await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory",
                                resourceUuid=r["cluster"], value=value)
        rows = await override_rows(node)
        assert [(u, t, v) for u, t, v, _ in rows] == [(r["cluster"], "Cluster", str(300 * MiB))]


async def test_a_stored_override_a_newer_validator_refuses_is_ignored(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        r = await make_lab(node)
        await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory", resourceUuid=r["zone"],
                            value="256M")
        await node.api_call("UpdateResourceConfig", category="lab", name="reservedMemory", resourceUuid=r["host"],
                            value="4G")
    from zstack_core.globalconfig import GlobalConfig, Range

    capped = GlobalConfig(category="lab", name="reservedMemory", type="size", default="512M",
                          resource_types=("Host", "Cluster", "Zone"), validators=[Range(0, 2 * 1024**3)])
    async with new_node(db_url, data_dir, LabPlugin(configs=[capped])) as node:  # starts all the same
        assert node.configs.resolve("lab", "reservedMemory", [r["host"], r["cluster"], r["zone"]]) == 256 * MiB
        assert len(await override_rows(node)) == 2  # the refused override is kept, not destroyed
