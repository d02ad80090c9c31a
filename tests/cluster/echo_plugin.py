"""A plugin for the in-process cluster tests: messages and APIs about "gadgets" whose replies
say which node handled them, an event type, and a recorder of node join/left hooks.

The plugin is an object per node (as the kernel's cluster plugin is), so two nodes in one
process keep separate records.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from zstack_core import (
    APIEvent,
    APIMessage,
    APIReply,
    ApiRegistration,
    ErrorCodeSpace,
    Event,
    MessageReply,
    NeedReplyMessage,
    Service,
    handles,
    hookimpl,
)

EchoErrors = ErrorCodeSpace(prefix="ECHO", codes={"1000": "the gadget refused", "1001": "the gadget's part broke"})


@attrs.define(kw_only=True)
class WhereAmIMsg(NeedReplyMessage):
    SERVICE_ID = "echo"
    gadget_uuid: str
    text: str = ""
    fail: bool = False


@attrs.define(kw_only=True)
class WhereAmIReply(MessageReply):
    node_uuid: str = ""
    text: str = ""
    account_uuid: str | None = None
    handled_at: datetime.datetime | None = None
    forwarded_from: str | None = None


@attrs.define(kw_only=True)
class RunThereMsg(NeedReplyMessage):
    """Carries a function: cannot cross to another node."""

    SERVICE_ID = "echo"
    gadget_uuid: str
    fn: Callable[[], Any]


@attrs.define(kw_only=True)
class APIGetGadgetMsg(APIMessage):
    SERVICE_ID = "echo"
    uuid: str


@attrs.define(kw_only=True)
class APIGetGadgetReply(APIReply):
    node_uuid: str = ""
    gadget_uuid: str = ""


@attrs.define(kw_only=True)
class APIBrewGadgetMsg(APIMessage):
    SERVICE_ID = "echo"
    LONG_RUNNING = True
    uuid: str
    hang: bool = False


@attrs.define(kw_only=True)
class APIBrewGadgetEvent(APIEvent):
    node_uuid: str = ""


@attrs.define(kw_only=True)
class GadgetChangedEvent(Event):
    gadget_uuid: str
    origin: str
    at: datetime.datetime | None = None


class EchoService(Service):
    id = "echo"

    def __init__(self, plugin: EchoPlugin) -> None:
        super().__init__()
        self.plugin = plugin
        self.handled: list[str] = []
        self.events: list[GadgetChangedEvent] = []
        self.brewing = asyncio.Event()
        self.release = asyncio.Event()

    async def start(self) -> None:
        self.node.bus.subscribe(GadgetChangedEvent, self.events.append)

    @handles(WhereAmIMsg)
    async def where(self, msg: WhereAmIMsg) -> WhereAmIReply:
        self.handled.append(msg.gadget_uuid)
        if msg.fail:
            raise EchoErrors.exc("1000", f"gadget {msg.gadget_uuid} says no",
                                 cause=EchoErrors.error("1001", "a spring", part="spring"))
        await asyncio.sleep(0)
        return WhereAmIReply(node_uuid=self.node.uuid, text=msg.text, account_uuid=msg.headers.get("account_uuid"),
                             handled_at=datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
                             forwarded_from=msg.headers.get("forwarded_from"))

    @handles(RunThereMsg)
    async def run_there(self, msg: RunThereMsg) -> MessageReply:
        msg.fn()
        return MessageReply()

    @handles(APIGetGadgetMsg)
    async def get(self, msg: APIGetGadgetMsg) -> APIGetGadgetReply:
        self.handled.append(msg.uuid)
        return APIGetGadgetReply(node_uuid=self.node.uuid, gadget_uuid=msg.uuid)

    @handles(APIBrewGadgetMsg)
    async def brew(self, msg: APIBrewGadgetMsg) -> APIBrewGadgetEvent:
        await self.node.api.report_progress(msg.headers.get("job_id"), 40)
        if msg.hang:
            self.brewing.set()
            await self.release.wait()
        return APIBrewGadgetEvent(node_uuid=self.node.uuid)


class EchoPlugin:
    def __init__(self) -> None:
        self.service = EchoService(self)
        self.joined: list[str] = []
        self.left: list[str] = []
        self.config_changes: list[tuple[str, str, Any, Any, str | None]] = []

    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return [self.service]

    @hookimpl
    def zstack_error_codes(self) -> Sequence[ErrorCodeSpace]:
        return [EchoErrors]

    @hookimpl
    def zstack_api_messages(self) -> Sequence[ApiRegistration]:
        return [ApiRegistration(message=APIGetGadgetMsg, resource="Gadget", route=("GET", "/v1/gadgets/{uuid}")),
                ApiRegistration(message=APIBrewGadgetMsg, resource="Gadget",
                                route=("PUT", "/v1/gadgets/{uuid}/actions"))]

    @hookimpl
    def zstack_node_join(self, node_uuid: str) -> None:
        self.joined.append(node_uuid)

    @hookimpl
    def zstack_node_left(self, node_uuid: str) -> None:
        self.left.append(node_uuid)

    @hookimpl
    def zstack_global_config_changed(self, category: str, name: str, old_value: Any, new_value: Any,
                                     resource_uuid: str | None) -> None:
        self.config_changes.append((category, name, old_value, new_value, resource_uuid))
