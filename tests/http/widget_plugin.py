"""A small plugin the HTTP tests install beside the real ones: a ``Widget`` resource whose APIs use
every route shape (POST create, PUT actions sharing a path, GET, DELETE with a mode, a long API
that reports progress or fails with a cause chain) and every field type the schemas must cover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import attrs
import peewee

from zstack_core import APIEvent, APIMessage, APIReply, ApiRegistration, ErrorCodeSpace, Service, handles, hookimpl
from zstack_core.db import ModelRegistration, ResourceModel
from zstack_core.errors import SysErrors, err
from zstack_core.ownership import disown_sync, own_sync
from zstack_core.query import QueryableResource
from zstack_core.tags import PatternedSystemTag

WidgetErrors = ErrorCodeSpace(prefix="WIDGET", codes={"1000": "widget is already running", "1001": "widget build failed"},
                              http_status={"1000": 409})
COLOR = PatternedSystemTag(pattern="color::{color}", resource_type="Widget")


@attrs.frozen(kw_only=True)
class WidgetPart:
    name: str
    count: int = 1


@attrs.frozen(kw_only=True)
class WidgetInventory:
    uuid: str
    name: str
    size: int
    weight: float
    enabled: bool
    state: str
    linked_uuid: str | None = None


class WidgetVO(ResourceModel):
    RESOURCE_TYPE = "Widget"
    INVENTORY = WidgetInventory

    name = peewee.CharField(max_length=255)
    size = peewee.IntegerField(default=1)
    weight = peewee.FloatField(default=1.0)
    enabled = peewee.BooleanField(default=True)
    state = peewee.CharField(max_length=32, default="Stopped")
    linked_uuid = peewee.CharField(max_length=32, null=True)

    class Meta:
        table_name = "test_widget"


@attrs.define(kw_only=True)
class APICreateWidgetMsg(APIMessage):
    """Create a widget."""

    SERVICE_ID = "widget"
    name: str
    size: int = 1
    weight: float = 1.0
    enabled: bool = True
    labels: list[str] = attrs.field(factory=list)
    parts: list[WidgetPart] = attrs.field(factory=list)
    spec: dict[str, Any] = attrs.field(factory=dict)
    note: str | None = None
    extra: Any = None


@attrs.define(kw_only=True)
class APIUpdateWidgetMsg(APIMessage):
    SERVICE_ID = "widget"
    uuid: str
    name: str | None = None
    size: int | None = None


@attrs.define(kw_only=True)
class APIStartWidgetMsg(APIMessage):
    SERVICE_ID = "widget"
    uuid: str


@attrs.define(kw_only=True)
class APILinkWidgetMsg(APIMessage):
    """Link widget ``uuid`` (acted on) to ``linked_widget_uuid`` (only used)."""

    SERVICE_ID = "widget"
    uuid: str
    linked_widget_uuid: str


@attrs.define(kw_only=True)
class APIBuildWidgetMsg(APIMessage):
    """A long API: reports progress per step; ``fail`` makes it fail with a cause chain."""

    SERVICE_ID = "widget"
    LONG_RUNNING = True
    uuid: str
    steps: int = 3
    step_seconds: float = 0.05
    fail: bool = False


@attrs.define(kw_only=True)
class APIDeleteWidgetMsg(APIMessage):
    SERVICE_ID = "widget"
    uuid: str
    delete_mode: str = "Permissive"


@attrs.define(kw_only=True)
class APIGetWidgetSizeMsg(APIMessage):
    SERVICE_ID = "widget"
    uuid: str
    unit: str = "B"


@attrs.define(kw_only=True)
class APIPurgeWidgetsMsg(APIMessage):
    """Delete every widget with ``size`` at least ``min_size`` (admin only)."""

    SERVICE_ID = "widget"
    min_size: int


@attrs.define(kw_only=True)
class APIWidgetEvent(APIEvent):
    inventory: WidgetInventory | None = None


@attrs.define(kw_only=True)
class APIGetWidgetSizeReply(APIReply):
    size: int = 0
    unit: str = "B"


@attrs.define(kw_only=True)
class APIPurgeWidgetsEvent(APIEvent):
    deleted: int = 0


class WidgetService(Service):
    id = "widget"
    start_order = 90

    async def _get(self, uuid: str) -> WidgetVO:
        row = await self.node.db.run(lambda: WidgetVO.get_or_none(WidgetVO.uuid == uuid))
        if row is None:
            raise SysErrors.exc("1004", f"no widget {uuid}")
        return row

    async def _save(self, row: WidgetVO) -> APIWidgetEvent:
        await self.node.db.run(row.save)
        return APIWidgetEvent(inventory=row.to_inventory())

    @handles(APICreateWidgetMsg)
    async def create(self, msg: APICreateWidgetMsg) -> APIWidgetEvent:
        def create() -> WidgetVO:
            row = WidgetVO.create(name=msg.name, size=msg.size, weight=msg.weight, enabled=msg.enabled)
            own_sync(row.uuid, "Widget", msg.account_uuid)
            self.node.tags.create_sync(row.uuid, "Widget", msg.system_tags)
            return row

        row = await self.node.db.atomic(create)
        return APIWidgetEvent(inventory=row.to_inventory())

    @handles(APIUpdateWidgetMsg)
    async def update(self, msg: APIUpdateWidgetMsg) -> APIWidgetEvent:
        row = await self._get(msg.uuid)
        if msg.name is not None:
            row.name = msg.name
        if msg.size is not None:
            row.size = msg.size
        return await self._save(row)

    @handles(APIStartWidgetMsg)
    async def start_widget(self, msg: APIStartWidgetMsg) -> APIWidgetEvent:
        row = await self._get(msg.uuid)
        if row.state == "Running":
            raise WidgetErrors.exc("1000", f"widget {msg.uuid} is Running")
        row.state = "Running"
        return await self._save(row)

    @handles(APILinkWidgetMsg)
    async def link(self, msg: APILinkWidgetMsg) -> APIWidgetEvent:
        row = await self._get(msg.uuid)
        await self._get(msg.linked_widget_uuid)
        row.linked_uuid = msg.linked_widget_uuid
        return await self._save(row)

    @handles(APIBuildWidgetMsg)
    async def build(self, msg: APIBuildWidgetMsg) -> APIWidgetEvent:
        row = await self._get(msg.uuid)
        steps = max(1, min(msg.steps, 50))
        for i in range(steps):
            await asyncio.sleep(max(0.0, min(msg.step_seconds, 1.0)))
            if msg.fail and i == steps // 2:
                raise WidgetErrors.exc("1001", f"step {i + 1} of {steps} broke",
                                       cause=err("1011", "the widget's jig is not mounted"))
            await self.node.api.report_progress(msg.headers.get("job_id"), (i + 1) * 100 // steps)
        row.size += 1
        return await self._save(row)

    @handles(APIDeleteWidgetMsg)
    async def delete(self, msg: APIDeleteWidgetMsg) -> APIEvent:
        if msg.delete_mode not in ("Permissive", "Enforcing"):
            raise SysErrors.exc("1007", "deleteMode must be Permissive or Enforcing", field="deleteMode")
        row = await self._get(msg.uuid)

        def delete() -> None:
            row.delete_instance()
            disown_sync(row.uuid)

        await self.node.db.atomic(delete)
        return APIEvent()

    @handles(APIGetWidgetSizeMsg)
    async def size(self, msg: APIGetWidgetSizeMsg) -> APIGetWidgetSizeReply:
        row = await self._get(msg.uuid)
        return APIGetWidgetSizeReply(size=row.size, unit=msg.unit)

    @handles(APIPurgeWidgetsMsg)
    async def purge(self, msg: APIPurgeWidgetsMsg) -> APIPurgeWidgetsEvent:
        def purge() -> int:
            rows = list(WidgetVO.select().where(WidgetVO.size >= msg.min_size))
            for row in rows:
                row.delete_instance()
                disown_sync(row.uuid)
            return len(rows)

        return APIPurgeWidgetsEvent(deleted=await self.node.db.atomic(purge))


@hookimpl
def zstack_services(node: Any) -> Sequence[Service]:
    return [WidgetService()]


@hookimpl
def zstack_models() -> Sequence[ModelRegistration]:
    return [ModelRegistration(name="test_widget", models=[WidgetVO])]


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [WidgetErrors]


@hookimpl
def zstack_system_tags() -> Sequence[PatternedSystemTag]:
    return [COLOR]


@hookimpl
def zstack_queryable_resources() -> Sequence[QueryableResource]:
    return [QueryableResource(name="Widget", model=WidgetVO, inventory=WidgetInventory)]


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    actions = ("PUT", "/v1/widgets/{uuid}/actions")
    return [
        ApiRegistration(message=APICreateWidgetMsg, route=("POST", "/v1/widgets"), resource="Widget"),
        ApiRegistration(message=APIUpdateWidgetMsg, route=actions, resource="Widget"),
        ApiRegistration(message=APIStartWidgetMsg, route=actions, resource="Widget"),
        ApiRegistration(message=APILinkWidgetMsg, route=actions, resource="Widget"),
        ApiRegistration(message=APIBuildWidgetMsg, route=actions, resource="Widget"),
        ApiRegistration(message=APIDeleteWidgetMsg, route=("DELETE", "/v1/widgets/{uuid}"), resource="Widget"),
        ApiRegistration(message=APIGetWidgetSizeMsg, route=("GET", "/v1/widgets/{uuid}/size"), resource="Widget"),
        ApiRegistration(message=APIPurgeWidgetsMsg, route=("DELETE", "/v1/widgets"), resource="Widget",
                        admin_only=True),
    ]
