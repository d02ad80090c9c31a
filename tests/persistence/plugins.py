"""Test plugins for the persistence tests: a small "lab" domain with zones, clusters, hosts,
things that carry system tags, samples to query, runtime configs and a long-running API.

They use only the public plugin surface (hookimpls, ResourceModel, GlobalConfig,
PatternedSystemTag, QueryableResource), as a third-party plugin would.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from typing import Any

import attrs
import peewee

from zstack_core import APIEvent, APIMessage, ApiRegistration, ErrorCodeSpace, GlobalProperty, Service, handles, hookimpl
from zstack_core.db import ModelRegistration, ResourceModel
from zstack_core.globalconfig import Choices, Custom, GlobalConfig, Range, Regex
from zstack_core.ownership import own_sync
from zstack_core.query import QueryableResource
from zstack_core.tags import PatternedSystemTag

LabErrors = ErrorCodeSpace(prefix="LAB", codes={"1000": "the oven failed"})

# -- resources with a config chain: host -> cluster -> zone --------------------------------------


@attrs.define(kw_only=True)
class ZoneInventory:
    uuid: str
    name: str


@attrs.define(kw_only=True)
class ClusterInventory:
    uuid: str
    name: str
    zone_uuid: str


@attrs.define(kw_only=True)
class HostInventory:
    uuid: str
    name: str
    cluster_uuid: str
    zone_uuid: str


@attrs.define(kw_only=True)
class DiskInventory:
    uuid: str
    host_uuid: str


class ZoneVO(ResourceModel):
    RESOURCE_TYPE = "Zone"
    INVENTORY = ZoneInventory
    name = peewee.CharField(max_length=255)

    class Meta:
        table_name = "lab_zone"


class ClusterVO(ResourceModel):
    RESOURCE_TYPE = "Cluster"
    INVENTORY = ClusterInventory
    name = peewee.CharField(max_length=255)
    zone_uuid = peewee.CharField(max_length=32)

    class Meta:
        table_name = "lab_cluster"

    def config_parents(self) -> list[str]:
        return [self.zone_uuid]


class HostVO(ResourceModel):
    RESOURCE_TYPE = "Host"
    INVENTORY = HostInventory
    name = peewee.CharField(max_length=255)
    cluster_uuid = peewee.CharField(max_length=32)
    zone_uuid = peewee.CharField(max_length=32)

    class Meta:
        table_name = "lab_host"

    def config_parents(self) -> list[str]:
        return [self.cluster_uuid, self.zone_uuid]


class DiskVO(ResourceModel):
    """A resource type no config is overridable on."""

    RESOURCE_TYPE = "Disk"
    INVENTORY = DiskInventory
    host_uuid = peewee.CharField(max_length=32)

    class Meta:
        table_name = "lab_disk"


# -- things: created by an API that accepts system tags ------------------------------------------


@attrs.define(kw_only=True)
class ThingInventory:
    uuid: str
    name: str


class ThingVO(ResourceModel):
    RESOURCE_TYPE = "Thing"
    INVENTORY = ThingInventory
    name = peewee.CharField(max_length=255)

    class Meta:
        table_name = "lab_thing"


THING_COLOR = PatternedSystemTag(pattern="color::{color}", resource_type="Thing", description="paint")
THING_SIZE = PatternedSystemTag(pattern="size::{width}x{height}", resource_type="Thing")
HOST_QEMU_IMG = PatternedSystemTag(pattern="qemu-img::version::{version}", resource_type="Host")
HOST_HVM = PatternedSystemTag(pattern="hvm::{flag}", resource_type="Host")
TAGS = [THING_COLOR, THING_SIZE, HOST_QEMU_IMG, HOST_HVM]


@attrs.define(kw_only=True)
class APICreateThingMsg(APIMessage):
    SERVICE_ID = "lab"
    name: str
    fail: bool = False
    """Fail after writing the row and its tags (the transaction must leave nothing)."""


@attrs.define(kw_only=True)
class APICreateThingEvent(APIEvent):
    inventory: ThingInventory | None = None


# -- samples: what the query tests generate ------------------------------------------------------


@attrs.define(kw_only=True)
class SampleInventory:
    uuid: str
    num: int
    name: str
    flag: bool
    opt: int | None
    note: str | None
    seen_at: datetime.datetime


class SampleVO(ResourceModel):
    RESOURCE_TYPE = "Sample"
    INVENTORY = SampleInventory
    num = peewee.IntegerField()
    name = peewee.CharField(max_length=64)
    flag = peewee.BooleanField()
    opt = peewee.IntegerField(null=True)
    note = peewee.CharField(max_length=64, null=True)
    seen_at = peewee.DateTimeField()

    class Meta:
        table_name = "lab_sample"


# -- a long API --------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APIBakeCakeMsg(APIMessage):
    SERVICE_ID = "lab"
    LONG_RUNNING = True
    flavour: str
    hang: bool = False
    burn: bool = False


@attrs.define(kw_only=True)
class APIBakeCakeEvent(APIEvent):
    cake: str = ""


class LabService(Service):
    id = "lab"
    start_order = 50

    def __init__(self) -> None:
        super().__init__()
        self.oven_started = asyncio.Event()

    @handles(APICreateThingMsg)
    async def create_thing(self, msg: APICreateThingMsg) -> APICreateThingEvent:
        node = self.node

        def write() -> ThingVO:
            thing = ThingVO.create(name=msg.name)
            node.tags.create_sync(thing.uuid, "Thing", msg.system_tags)
            own_sync(thing.uuid, "Thing", msg.account_uuid)
            if msg.fail:
                raise LabErrors.exc("1000", f"thing {msg.name} failed after it was written")
            return thing

        thing = await node.db.atomic(write)
        return APICreateThingEvent(inventory=thing.to_inventory())

    @handles(APIBakeCakeMsg)
    async def bake(self, msg: APIBakeCakeMsg) -> APIBakeCakeEvent:
        await self.node.api.report_progress(msg.headers["job_id"], 50)
        self.oven_started.set()
        if msg.hang:
            await asyncio.Event().wait()  # until the process dies
        if msg.burn:
            raise LabErrors.exc("1000", f"the {msg.flavour} cake burnt")
        return APIBakeCakeEvent(cake=f"{msg.flavour} cake")


# -- configs -------------------------------------------------------------------------------------


def _power_of_two(value: int) -> None:
    if value <= 0 or value & (value - 1):
        raise ValueError(f"{value} is not a power of two")


WORKER_COUNT = GlobalConfig(category="lab", name="worker.count", type="int", default=4,
                            description="workers per oven", validators=[Range(1, 16)])
MODE = GlobalConfig(category="lab", name="mode", default="fast", validators=[Choices(("fast", "safe", "off"))])
HOST_PREFIX = GlobalConfig(category="lab", name="host.prefix", default="node-1",
                           validators=[Regex(r"[a-z]+-[0-9]+")])
BATCH_SIZE = GlobalConfig(category="lab", name="batch.size", type="int", default=8,
                          validators=[Custom(_power_of_two, "a power of two")])
ENABLED = GlobalConfig(category="lab", name="enabled", type="bool", default=True)
RATIO = GlobalConfig(category="lab", name="ratio", type="float", default=0.5, validators=[Range(0, 1)])
RESERVED_MEMORY = GlobalConfig(category="lab", name="reservedMemory", type="size", default="512M",
                               description="memory kept for the host itself",
                               resource_types=("Host", "Cluster", "Zone"))
CONFIGS = [WORKER_COUNT, MODE, HOST_PREFIX, BATCH_SIZE, ENABLED, RATIO, RESERVED_MEMORY]


class LabPlugin:
    """The lab domain. ``configs`` chooses which global configs it declares; every config change
    it hears of is appended to ``changes``."""

    def __init__(self, configs: Sequence[GlobalConfig] = tuple(CONFIGS),
                 properties: Sequence[GlobalProperty] = ()) -> None:
        self.configs = list(configs)
        self.properties = list(properties)
        self.changes: list[tuple[str, str, Any, Any, str | None]] = []
        self.service = LabService()

    @hookimpl
    def zstack_error_codes(self) -> Sequence[ErrorCodeSpace]:
        return [LabErrors]

    @hookimpl
    def zstack_models(self) -> Sequence[ModelRegistration]:
        return [ModelRegistration(name="lab", models=[ZoneVO, ClusterVO, HostVO, DiskVO, ThingVO, SampleVO])]

    @hookimpl
    def zstack_services(self, node: Any) -> Sequence[Service]:
        return [self.service]

    @hookimpl
    def zstack_api_messages(self) -> Sequence[ApiRegistration]:
        return [ApiRegistration(message=APICreateThingMsg, resource="Thing", route=("POST", "/v1/things")),
                ApiRegistration(message=APIBakeCakeMsg)]

    @hookimpl
    def zstack_queryable_resources(self) -> Sequence[QueryableResource]:
        return [QueryableResource(name="Thing", model=ThingVO, inventory=ThingInventory),
                QueryableResource(name="Sample", model=SampleVO, inventory=SampleInventory)]

    @hookimpl
    def zstack_global_configs(self) -> Sequence[GlobalConfig]:
        return self.configs

    @hookimpl
    def zstack_global_properties(self) -> Sequence[GlobalProperty]:
        return self.properties

    @hookimpl
    def zstack_system_tags(self) -> Sequence[PatternedSystemTag]:
        return TAGS

    @hookimpl
    async def zstack_global_config_changed(self, category: str, name: str, old_value: Any, new_value: Any,
                                           resource_uuid: str | None) -> None:
        self.changes.append((category, name, old_value, new_value, resource_uuid))
