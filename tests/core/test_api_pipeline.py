"""The API pipeline (ZStack's ApiMediator): JSON structured by cattrs, interceptors in their
defined order, refusals, and long APIs that answer with a job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core import (
    APIEvent,
    APIMessage,
    ApiInterceptor,
    ApiJob,
    ApiRegistration,
    ErrorCodeSpace,
    ManagementNode,
    MessageReply,
    Service,
    ZStackError,
    handles,
    hookimpl,
)

Shop = ErrorCodeSpace(prefix="SHOP", codes={"1000": "order refused", "1001": "out of stock"})


@attrs.define(kw_only=True)
class Address:
    street_name: str
    house_number: int


@attrs.define(kw_only=True)
class APICreateOrderMsg(APIMessage):
    SERVICE_ID = "shop"
    item_name: str
    quantity: int
    unit_price: float = 1.0
    gift_wrap: bool = False
    delivery_address: Address | None = None
    coupon_codes: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class APICreateOrderEvent(APIEvent):
    item_name: str = ""
    total: float = 0.0
    seen_tags: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class APIPingShopMsg(APIMessage):
    SERVICE_ID = "shop"


@attrs.define(kw_only=True)
class APIShipOrderMsg(APIMessage):
    SERVICE_ID = "shop"
    LONG_RUNNING = True
    item_name: str
    fail: bool = False


@attrs.define(kw_only=True)
class APIShipOrderEvent(APIEvent):
    tracking_number: str = ""


class Trail:
    """Where interceptors and the service write down that they saw a message."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.refuse: str | None = None
        self.crash: str | None = None
        self.ship_gate = asyncio.Event()
        self.ship_started = asyncio.Event()
        self.shipped: list[str] = []


class Recording(ApiInterceptor):
    def __init__(self, trail: Trail, name: str, order: int = 100,
                 messages: tuple[type[APIMessage], ...] = ()) -> None:
        self.trail = trail
        self.name = name
        self.order = order
        self.messages = messages

    async def intercept(self, msg: APIMessage, node: ManagementNode) -> APIMessage:
        await asyncio.sleep(0)
        self.trail.seen.append(self.name)
        if self.trail.refuse == self.name:
            raise Shop.exc("1000", f"refused by {self.name}")
        if self.trail.crash == self.name:
            raise KeyError("oops")
        msg.user_tags.append(self.name)  # interceptors may amend the message
        return msg


class ShopService(Service):
    id = "shop"
    start_order = 10

    def __init__(self, trail: Trail) -> None:
        super().__init__()
        self.trail = trail
        self.interceptors = [Recording(trail, "service-1"), Recording(trail, "service-2")]

    @handles(APICreateOrderMsg)
    async def create(self, msg: APICreateOrderMsg) -> APICreateOrderEvent:
        self.trail.seen.append("service")
        if msg.quantity > 100:
            raise Shop.exc("1001", f"only 100 {msg.item_name} left")
        return APICreateOrderEvent(item_name=msg.item_name, total=msg.quantity * msg.unit_price,
                                   seen_tags=list(msg.user_tags))

    @handles(APIPingShopMsg)
    async def ping(self, msg: APIPingShopMsg) -> APIEvent:
        self.trail.seen.append("service")
        return APIEvent()

    @handles(APIShipOrderMsg)
    async def ship(self, msg: APIShipOrderMsg) -> APIShipOrderEvent:
        self.trail.seen.append("service")
        job_id = msg.headers["job_id"]
        await self.node.api.report_progress(job_id, 10)
        self.trail.ship_started.set()
        await self.trail.ship_gate.wait()
        await self.node.api.report_progress(job_id, 140)  # clamped to 100
        if msg.fail:
            raise Shop.exc("1001", "the truck is gone")
        self.trail.shipped.append(msg.item_name)
        return APIShipOrderEvent(tracking_number=f"T-{msg.item_name}")


class ShopPlugin:
    def __init__(self, trail: Trail) -> None:
        self.trail = trail

    @hookimpl
    def zstack_error_codes(self) -> Sequence[ErrorCodeSpace]:
        return [Shop]

    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return [ShopService(self.trail)]

    @hookimpl
    def zstack_api_messages(self) -> Sequence[ApiRegistration]:
        return [
            ApiRegistration(message=APICreateOrderMsg,
                            interceptors=[Recording(self.trail, "message-1"), Recording(self.trail, "message-2")]),
            ApiRegistration(message=APIPingShopMsg),
            ApiRegistration(message=APIShipOrderMsg),
        ]

    @hookimpl
    def zstack_api_interceptors(self) -> Sequence[ApiInterceptor]:
        return [Recording(self.trail, "global-50", order=50), Recording(self.trail, "global-10", order=10)]


class AuditPlugin:
    """A second plugin adding global interceptors between and around the first one's."""

    def __init__(self, trail: Trail) -> None:
        self.trail = trail

    @hookimpl
    def zstack_api_interceptors(self) -> Sequence[ApiInterceptor]:
        return [
            Recording(self.trail, "global-30", order=30),
            Recording(self.trail, "global-5", order=5),
            Recording(self.trail, "global-only-ship", order=1, messages=(APIShipOrderMsg,)),
        ]


@pytest.fixture
def trail() -> Trail:
    return Trail()


@pytest.fixture
async def node(trail: Trail, data_dir: Path) -> AsyncIterator[ManagementNode]:
    async with ManagementNode(plugins=[ShopPlugin(trail), AuditPlugin(trail)], load_entry_points=False,
                              data_dir=data_dir) as node:
        yield node


FULL_CHAIN = ["global-5", "global-10", "global-30", "global-50", "service-1", "service-2", "message-1", "message-2"]


async def test_api_registered_by_plugin(node: ManagementNode) -> None:
    assert {"CreateOrder", "PingShop", "ShipOrder"} <= set(node.api.registrations)
    assert node.api.owner("CreateOrder") == "ShopPlugin"
    assert node.api.message_class("CreateOrder") is APICreateOrderMsg


async def test_json_is_structured_with_camel_case_fields(node: ManagementNode) -> None:
    reply = await node.api_call("CreateOrder", {
        "itemName": "disk", "quantity": 3, "unitPrice": 2, "giftWrap": True,
        "deliveryAddress": {"streetName": "Main", "houseNumber": 7}, "couponCodes": ["A", "B"],
        "userTags": ["priority::high"],
    })
    assert isinstance(reply, APICreateOrderEvent)
    assert reply.item_name == "disk" and reply.total == 6.0
    assert reply.seen_tags[0] == "priority::high"
    msg = node.api.build("CreateOrder", {"itemName": "x", "quantity": 1,
                                         "deliveryAddress": {"streetName": "s", "houseNumber": 1}})
    assert isinstance(msg, APICreateOrderMsg)
    assert msg.delivery_address == Address(street_name="s", house_number=1)
    assert msg.unit_price == 1.0 and isinstance(msg.unit_price, float)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"itemName": "x", "quantity": "3"}, "$.quantity", "expected int"),
    ({"itemName": "x", "quantity": True}, "$.quantity", "expected int"),
    ({"itemName": "x", "quantity": 1.5}, "$.quantity", "expected int"),
    ({"itemName": 5, "quantity": 1}, "$.itemName", "expected str"),
    ({"quantity": 1}, "$.itemName", "required field missing"),
    ({"itemName": "x", "quantity": 1, "unitPrice": "cheap"}, "$.unitPrice", "expected float"),
    ({"itemName": "x", "quantity": 1, "giftWrap": 1}, "$.giftWrap", "expected bool"),
    ({"itemName": "x", "quantity": 1, "couponCodes": ["a", 2]}, "$.couponCodes[1]", "expected str"),
    ({"itemName": "x", "quantity": 1, "deliveryAddress": {"streetName": "s"}},
     "$.deliveryAddress.houseNumber", "required field missing"),
    ({"itemName": "x", "quantity": 1, "deliveryAddress": {"streetName": "s", "houseNumber": "7"}},
     "$.deliveryAddress.houseNumber", "expected int"),
])
async def test_bad_input_names_the_field_path(node: ManagementNode, trail: Trail, body: dict[str, Any], field: str,
                                              words: str) -> None:
    with pytest.raises(ZStackError) as info:
        await node.api_call("CreateOrder", body)
    error = info.value.error
    assert error.code == "SYS.1007"
    assert error.opaque["field"] == field
    assert error.details.startswith(f"{field}: ") and words in error.details
    assert trail.seen == []  # nothing ran


async def test_unknown_field_is_refused_by_name(node: ManagementNode) -> None:
    with pytest.raises(ZStackError) as info:
        await node.api_call("CreateOrder", {"itemName": "x", "quantity": 1, "colour": "red"})
    assert info.value.code == "SYS.1007" and "colour" in info.value.error.details
    with pytest.raises(ZStackError) as info:
        # snake_case is not the wire name
        await node.api_call("CreateOrder", {"itemName": "x", "quantity": 1, "unit_price": 2})
    assert info.value.code == "SYS.1007" and "unit_price" in info.value.error.details
    with pytest.raises(ZStackError) as info:
        await node.api_call("CreateOrder", {"itemName": "x", "quantity": 1,
                                            "deliveryAddress": {"streetName": "s", "houseNumber": 1, "flat": 2}})
    assert "$.deliveryAddress" in info.value.error.details and "flat" in info.value.error.details


@pytest.mark.parametrize("body", [[], "text", 3, None])
async def test_body_must_be_an_object(node: ManagementNode, body: Any) -> None:
    with pytest.raises(ZStackError) as info:
        node.api.build("CreateOrder", body)
    assert info.value.code == "SYS.1007" and info.value.error.opaque["field"] == "$"
    assert "JSON object" in info.value.error.details


async def test_fields_not_on_the_wire_cannot_be_set(node: ManagementNode) -> None:
    for key in ("sessionUuid", "timeout", "headers", "id"):
        with pytest.raises(ZStackError) as info:
            node.api.build("PingShop", {key: "x"})
        assert info.value.code == "SYS.1007" and key in info.value.error.details


async def test_unknown_api_gives_sys_1008(node: ManagementNode) -> None:
    with pytest.raises(ZStackError) as info:
        await node.api_call("CreateOrdr", {})
    assert info.value.code == "SYS.1008" and "CreateOrdr" in info.value.error.details


async def test_interceptor_order(node: ManagementNode, trail: Trail) -> None:
    reply = await node.api_call("CreateOrder", itemName="disk", quantity=1)
    assert trail.seen == [*FULL_CHAIN, "service"]
    assert reply.seen_tags == FULL_CHAIN  # each interceptor's amendment reached the service


async def test_interceptor_message_filter(node: ManagementNode, trail: Trail) -> None:
    await node.api_call("PingShop")
    # no per-message interceptors for PingShop; the ShipOrder-only global one is skipped
    assert trail.seen == ["global-5", "global-10", "global-30", "global-50", "service-1", "service-2", "service"]


@pytest.mark.parametrize("refuser", FULL_CHAIN)
async def test_any_interceptor_can_refuse(node: ManagementNode, trail: Trail, refuser: str) -> None:
    trail.refuse = refuser
    reply = await node.call_api(APICreateOrderMsg(item_name="disk", quantity=1))
    assert reply.error is not None and reply.error.code == "SHOP.1000"
    assert reply.error.details == f"refused by {refuser}"
    assert trail.seen == FULL_CHAIN[:FULL_CHAIN.index(refuser) + 1]  # the chain stops there
    assert "service" not in trail.seen
    with pytest.raises(ZStackError, match=f"refused by {refuser}"):
        await node.api_call("CreateOrder", itemName="disk", quantity=1)


async def test_interceptor_crash_is_an_error_not_a_crash(node: ManagementNode, trail: Trail) -> None:
    trail.crash = "service-2"
    reply = await node.call_api(APICreateOrderMsg(item_name="disk", quantity=1))
    assert reply.error is not None and reply.error.code == "SYS.1000"
    assert "service-2" in reply.error.details and "KeyError" in reply.error.details
    assert "service" not in trail.seen
    trail.crash = None
    trail.seen.clear()
    reply = await node.call_api(APICreateOrderMsg(item_name="disk", quantity=2))
    assert reply.success and trail.seen[-1] == "service"


async def test_service_error_reaches_the_caller(node: ManagementNode) -> None:
    reply = await node.call_api(APICreateOrderMsg(item_name="disk", quantity=1000))
    assert reply.error is not None and reply.error.code == "SHOP.1001" and "only 100 disk" in reply.error.details


async def test_api_refused_when_the_node_is_not_running(trail: Trail, data_dir: Path) -> None:
    node = ManagementNode(plugins=[ShopPlugin(trail)], load_entry_points=False, data_dir=data_dir)
    async with node:
        pass
    reply = await node.call_api(APIPingShopMsg())
    assert reply.error is not None and reply.error.code == "SYS.1014"
    assert trail.seen == []


async def test_long_api_job_succeeds(node: ManagementNode, trail: Trail) -> None:
    job = await node.submit_api(APIShipOrderMsg(item_name="disk"))
    assert isinstance(job, ApiJob)
    assert job.state == "Running" and job.api_name == "ShipOrder" and job.result is None
    await asyncio.wait_for(trail.ship_started.wait(), 5)
    running = await node.api.jobs.get(job.id)
    assert running is not None and running.state == "Running" and running.progress == 10
    assert trail.seen[0] == "global-only-ship"  # interceptors ran before the job was created
    trail.ship_gate.set()
    done = await node.api.wait_job(job.id, timeout=5)
    assert done.state == "Succeeded" and done.progress == 100
    assert done.result is not None and done.result["trackingNumber"] == "T-disk"
    assert done.error is None and done.finished_at is not None and done.finished_at >= done.created_at


async def test_long_api_job_fails_with_its_error_code(node: ManagementNode, trail: Trail) -> None:
    trail.ship_gate.set()
    job = await node.submit_api(APIShipOrderMsg(item_name="disk", fail=True))
    assert isinstance(job, ApiJob)
    done = await node.api.wait_job(job.id, timeout=5)
    assert done.state == "Failed" and done.result is None
    assert done.error is not None and done.error.code == "SHOP.1001" and done.error.details == "the truck is gone"


async def test_long_api_refused_by_an_interceptor_makes_no_job(node: ManagementNode, trail: Trail) -> None:
    trail.refuse = "global-only-ship"
    reply = await node.submit_api(APIShipOrderMsg(item_name="disk"))
    assert isinstance(reply, MessageReply) and reply.error is not None and reply.error.code == "SHOP.1000"
    assert "service" not in trail.seen


async def test_short_api_submitted_answers_at_once(node: ManagementNode) -> None:
    reply = await node.submit_api(APIPingShopMsg())
    assert isinstance(reply, MessageReply) and reply.success


async def test_unknown_job(node: ManagementNode) -> None:
    with pytest.raises(ZStackError) as info:
        await node.api.wait_job("no-such-job")
    assert info.value.code == "SYS.1009"
    await node.api.report_progress("no-such-job", 50)  # ignored, not an error
    await node.api.report_progress(None, 50)


async def test_stop_waits_for_running_jobs(trail: Trail, data_dir: Path) -> None:
    node = ManagementNode(plugins=[ShopPlugin(trail)], load_entry_points=False, data_dir=data_dir)
    await node.start()
    job = await node.submit_api(APIShipOrderMsg(item_name="disk"))
    assert isinstance(job, ApiJob)
    await trail.ship_started.wait()
    asyncio.get_running_loop().call_later(0.02, trail.ship_gate.set)
    await node.stop()
    assert trail.shipped == ["disk"]  # the job ran to its end before the node stopped


async def test_long_jobs_beyond_api_max_running_jobs_wait_their_turn_in_order(trail: Trail,
                                                                             data_dir: Path) -> None:
    async with ManagementNode(plugins=[ShopPlugin(trail), AuditPlugin(trail)], load_entry_points=False,
                              data_dir=data_dir, settings={"api.max_running_jobs": 2}) as node:
        jobs = [await node.submit_api(APIShipOrderMsg(item_name=f"item-{i}")) for i in range(6)]
        assert all(isinstance(j, ApiJob) and j.state == "Running" for j in jobs)
        for _ in range(50):  # let every job task reach its handler or its place in line
            await asyncio.sleep(0)
        assert trail.seen.count("service") == 2  # two handlers entered, four jobs waiting
        waiting = await node.api.jobs.get(jobs[5].id)  # type: ignore[union-attr]
        assert waiting is not None and waiting.state == "Running" and not waiting.progress
        trail.ship_gate.set()
        done = [await node.api.wait_job(j.id, timeout=10) for j in jobs]  # type: ignore[union-attr]
        assert [d.state for d in done] == ["Succeeded"] * 6
        assert trail.shipped == [f"item-{i}" for i in range(6)]  # in submission order


async def test_a_job_wait_ends_with_the_job_or_when_the_node_stops() -> None:
    """What held polls and ``wait_job`` wait on: the job's end, a timeout, or ``wake_all`` (the
    HTTP server stopping); a job that is not running here is not waited for."""
    from zstack_core.mediator import ApiJob, JobStore

    store = JobStore()
    job = ApiJob(id="j1", api_name="Build")
    await store.create(job)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await store.wait("j1", 0.05) is True and loop.time() - began >= 0.04  # timed out
    waiting = asyncio.ensure_future(store.wait("j1", 10))
    await asyncio.sleep(0.01)
    job.state = "Succeeded"
    await store.update(job)
    assert await asyncio.wait_for(waiting, 1) is True
    assert await store.wait("j1", 10) is False  # finished: nothing to wait for
    assert await store.wait("elsewhere", 10) is False  # not this node's
    other = ApiJob(id="j2", api_name="Build")
    await store.create(other)
    waiting = asyncio.ensure_future(store.wait("j2", 10))
    await asyncio.sleep(0.01)
    store.wake_all()
    assert await asyncio.wait_for(waiting, 1) is True and other.state == "Running"
