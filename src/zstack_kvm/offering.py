"""Instance offerings: named VM sizes (CPUs and memory) to create VMs from."""

from __future__ import annotations

from typing import Any

from zstack_core import handles, invalid_argument
from zstack_core.header import InstanceOfferingInventory
from zstack_core.ownership import own_sync

from .api import (
    APIChangeInstanceOfferingStateMsg,
    APICreateInstanceOfferingMsg,
    APIDeleteInstanceOfferingMsg,
    APIInstanceOfferingEvent,
    APIUpdateInstanceOfferingMsg,
)
from .checks import STATE_OF_EVENT, cascade_mode, check_description, check_name, check_state_event
from .errors import VmErrors
from .models import InstanceOfferingVO
from .service import Part
from .zone import forget_resource_sync

__all__ = ["InstanceOfferingPart", "MIN_MEMORY", "check_vm_size"]

MIN_MEMORY = 16 << 20
"""The smallest VM (16 MiB): smaller guests do not boot even firmware."""
MAX_CPU = 1024


def check_vm_size(cpu_num: int | None, memory_size: int | None, prefix: str = "$") -> tuple[int, int]:
    """CPUs (1..1024) and memory (a whole number of MiB, at least 16 MiB)."""
    if cpu_num is None or cpu_num < 1 or cpu_num > MAX_CPU:
        raise invalid_argument(f"cpuNum must be between 1 and {MAX_CPU}, got {cpu_num}", f"{prefix}.cpuNum")
    if memory_size is None or memory_size < MIN_MEMORY:
        raise invalid_argument(f"memorySize must be at least {MIN_MEMORY} bytes (16 MiB), got {memory_size}",
                               f"{prefix}.memorySize")
    if memory_size % (1 << 20):
        raise invalid_argument(f"memorySize must be a whole number of MiB, got {memory_size}", f"{prefix}.memorySize")
    return cpu_num, memory_size


class InstanceOfferingPart(Part):
    async def get(self, uuid: str) -> InstanceOfferingVO:
        row = await self.db(lambda: InstanceOfferingVO.get_or_none(InstanceOfferingVO.uuid == uuid))
        if row is None:
            raise VmErrors.exc("1003", f"no instance offering {uuid}", field="instanceOfferingUuid")
        return row

    @handles(APICreateInstanceOfferingMsg)
    async def create(self, msg: APICreateInstanceOfferingMsg) -> APIInstanceOfferingEvent:
        name = check_name(msg.name)
        check_description(msg.description)
        cpu, memory = check_vm_size(msg.cpu_num, msg.memory_size)
        if msg.allocator_strategy is not None and msg.allocator_strategy not in self.service.allocator.strategy_names():
            raise invalid_argument(f"allocatorStrategy {msg.allocator_strategy!r} is unknown; known: "
                                   f"{', '.join(self.service.allocator.strategy_names())}", "$.allocatorStrategy")

        def insert() -> InstanceOfferingInventory:
            row = InstanceOfferingVO.create(name=name, description=msg.description, cpu_num=cpu, memory_size=memory,
                                            allocator_strategy=msg.allocator_strategy)
            own_sync(row.uuid, "InstanceOffering", msg.account_uuid)
            self.node.tags.create_sync(row.uuid, "InstanceOffering", msg.system_tags)
            return row.to_inventory()

        return APIInstanceOfferingEvent(inventory=await self.atomic(insert))

    @handles(APIUpdateInstanceOfferingMsg)
    async def update(self, msg: APIUpdateInstanceOfferingMsg) -> APIInstanceOfferingEvent:
        fields: dict[str, Any] = {}
        if msg.name is not None:
            fields["name"] = check_name(msg.name)
        if msg.description is not None:
            check_description(msg.description)
            fields["description"] = msg.description
        row = await self.get(msg.uuid)
        if fields:
            await self.db(lambda: InstanceOfferingVO.update(**fields).where(InstanceOfferingVO.uuid == row.uuid).execute())
        return APIInstanceOfferingEvent(inventory=(await self.get(msg.uuid)).to_inventory())

    @handles(APIChangeInstanceOfferingStateMsg)
    async def change_state(self, msg: APIChangeInstanceOfferingStateMsg) -> APIInstanceOfferingEvent:
        state = STATE_OF_EVENT[check_state_event(msg.state_event, ("enable", "disable"))]
        row = await self.get(msg.uuid)
        await self.db(lambda: InstanceOfferingVO.update(state=state).where(InstanceOfferingVO.uuid == row.uuid).execute())
        return APIInstanceOfferingEvent(inventory=(await self.get(msg.uuid)).to_inventory())

    @handles(APIDeleteInstanceOfferingMsg)
    async def delete(self, msg: APIDeleteInstanceOfferingMsg) -> APIInstanceOfferingEvent:
        # VMs keep their own CPU and memory numbers, so an offering in use can go.
        cascade_mode(msg.delete_mode)
        row = await self.get(msg.uuid)

        def remove() -> None:
            InstanceOfferingVO.delete().where(InstanceOfferingVO.uuid == row.uuid).execute()
            forget_resource_sync(self.node, row.uuid)

        await self.atomic(remove)
        return APIInstanceOfferingEvent()
