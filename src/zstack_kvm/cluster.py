"""Clusters of hosts of one hypervisor type (``KVM``): create, update, state, delete."""

from __future__ import annotations

from typing import Any

from zstack_core import handles
from zstack_core.header import ClusterInventory
from zstack_core.ownership import own_sync

from .api import APIChangeClusterStateMsg, APIClusterEvent, APICreateClusterMsg, APIDeleteClusterMsg, APIUpdateClusterMsg
from .cascade import run_cascade
from .checks import STATE_OF_EVENT, cascade_mode, check_description, check_name, check_state_event
from .errors import ClusterErrors
from .models import ClusterVO
from .service import Part
from .zone import forget_resource_sync

__all__ = ["ClusterPart"]


class ClusterPart(Part):
    async def get(self, uuid: str) -> ClusterVO:
        row = await self.db(lambda: ClusterVO.get_or_none(ClusterVO.uuid == uuid))
        if row is None:
            raise ClusterErrors.exc("1000", f"no cluster {uuid}", field="uuid")
        return row

    def hypervisor_types(self) -> list[str]:
        return sorted({f.hypervisor_type for f in self.node.extension("hypervisor_factories")})

    @handles(APICreateClusterMsg)
    async def create(self, msg: APICreateClusterMsg) -> APIClusterEvent:
        name = check_name(msg.name)
        check_description(msg.description)
        types = self.hypervisor_types()
        if msg.hypervisor_type not in types:
            raise ClusterErrors.exc("1001", f"hypervisor type {msg.hypervisor_type!r} is not provided by any "
                                            f"installed plugin; known: {', '.join(types) or 'none'}",
                                    field="hypervisorType")
        zone = await self.service.zones.get(msg.zone_uuid)

        def insert() -> ClusterInventory:
            row = ClusterVO.create(name=name, description=msg.description, zone_uuid=zone.uuid,
                                   hypervisor_type=msg.hypervisor_type)
            own_sync(row.uuid, "Cluster", msg.account_uuid)
            self.node.tags.create_sync(row.uuid, "Cluster", msg.system_tags)
            return row.to_inventory()

        inv = await self.node.tasks.run(f"zone-{zone.uuid}", lambda: self.atomic(insert))
        return APIClusterEvent(inventory=inv)

    @handles(APIUpdateClusterMsg)
    async def update(self, msg: APIUpdateClusterMsg) -> APIClusterEvent:
        fields: dict[str, Any] = {}
        if msg.name is not None:
            fields["name"] = check_name(msg.name)
        if msg.description is not None:
            check_description(msg.description)
            fields["description"] = msg.description
        row = await self.get(msg.uuid)
        if fields:
            await self.db(lambda: ClusterVO.update(**fields).where(ClusterVO.uuid == row.uuid).execute())
        return APIClusterEvent(inventory=(await self.get(msg.uuid)).to_inventory())

    @handles(APIChangeClusterStateMsg)
    async def change_state(self, msg: APIChangeClusterStateMsg) -> APIClusterEvent:
        state = STATE_OF_EVENT[check_state_event(msg.state_event, ("enable", "disable"))]
        row = await self.get(msg.uuid)
        await self.db(lambda: ClusterVO.update(state=state).where(ClusterVO.uuid == row.uuid).execute())
        return APIClusterEvent(inventory=(await self.get(msg.uuid)).to_inventory())

    @handles(APIDeleteClusterMsg)
    async def delete_api(self, msg: APIDeleteClusterMsg) -> APIClusterEvent:
        mode = cascade_mode(msg.delete_mode)
        await self.get(msg.uuid)
        await self.delete(msg.uuid, mode)
        return APIClusterEvent()

    async def delete(self, uuid: str, mode: str) -> None:
        async def work() -> None:
            if await self.db(lambda: ClusterVO.get_or_none(ClusterVO.uuid == uuid)) is None:
                return
            await run_cascade(self.service, "Cluster", uuid, mode)

            def remove() -> None:
                ClusterVO.delete().where(ClusterVO.uuid == uuid).execute()
                forget_resource_sync(self.node, uuid)

            await self.atomic(remove)

        await self.node.tasks.run(f"cluster-{uuid}", work)
