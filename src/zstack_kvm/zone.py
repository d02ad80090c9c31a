"""Zones: create, update, enable/disable, delete (cascading to clusters, hosts and VMs)."""

from __future__ import annotations

from typing import Any

from zstack_core import handles
from zstack_core.header import ZoneInventory
from zstack_core.ownership import disown_sync, own_sync

from .api import APIChangeZoneStateMsg, APICreateZoneMsg, APIDeleteZoneMsg, APIUpdateZoneMsg, APIZoneEvent
from .cascade import run_cascade
from .checks import STATE_OF_EVENT, cascade_mode, check_description, check_name, check_state_event
from .errors import ZoneErrors
from .models import ZoneVO
from .service import Part

__all__ = ["ZonePart", "forget_resource_sync"]


def forget_resource_sync(node: Any, uuid: str) -> None:
    """Drop what the kernel keeps about a deleted resource: tags, config overrides, owner."""
    node.tags.delete_sync(uuid)
    node.configs.forget_resource_sync(uuid)
    disown_sync(uuid)


class ZonePart(Part):
    async def get(self, uuid: str) -> ZoneVO:
        row = await self.db(lambda: ZoneVO.get_or_none(ZoneVO.uuid == uuid))
        if row is None:
            raise ZoneErrors.exc("1000", f"no zone {uuid}", field="uuid")
        return row

    @handles(APICreateZoneMsg)
    async def create(self, msg: APICreateZoneMsg) -> APIZoneEvent:
        name = check_name(msg.name)
        check_description(msg.description)

        def insert() -> ZoneInventory:
            row = ZoneVO.create(name=name, description=msg.description)
            own_sync(row.uuid, "Zone", msg.account_uuid)
            self.node.tags.create_sync(row.uuid, "Zone", msg.system_tags)
            return row.to_inventory()

        return APIZoneEvent(inventory=await self.atomic(insert))

    @handles(APIUpdateZoneMsg)
    async def update(self, msg: APIUpdateZoneMsg) -> APIZoneEvent:
        fields: dict[str, Any] = {}
        if msg.name is not None:
            fields["name"] = check_name(msg.name)
        if msg.description is not None:
            check_description(msg.description)
            fields["description"] = msg.description
        row = await self.get(msg.uuid)
        if fields:
            await self.db(lambda: ZoneVO.update(**fields).where(ZoneVO.uuid == row.uuid).execute())
            row = await self.get(msg.uuid)
        return APIZoneEvent(inventory=row.to_inventory())

    @handles(APIChangeZoneStateMsg)
    async def change_state(self, msg: APIChangeZoneStateMsg) -> APIZoneEvent:
        state = STATE_OF_EVENT[check_state_event(msg.state_event, ("enable", "disable"))]
        row = await self.get(msg.uuid)
        await self.db(lambda: ZoneVO.update(state=state).where(ZoneVO.uuid == row.uuid).execute())
        return APIZoneEvent(inventory=(await self.get(msg.uuid)).to_inventory())

    @handles(APIDeleteZoneMsg)
    async def delete_api(self, msg: APIDeleteZoneMsg) -> APIZoneEvent:
        mode = cascade_mode(msg.delete_mode)
        await self.get(msg.uuid)
        await self.node.tasks.run(f"zone-{msg.uuid}", lambda: self.delete(msg.uuid, mode))
        return APIZoneEvent()

    async def delete(self, uuid: str, mode: str) -> None:
        if await self.db(lambda: ZoneVO.get_or_none(ZoneVO.uuid == uuid)) is None:
            return
        await run_cascade(self.service, "Zone", uuid, mode)

        def remove() -> None:
            ZoneVO.delete().where(ZoneVO.uuid == uuid).execute()
            forget_resource_sync(self.node, uuid)

        await self.atomic(remove)
