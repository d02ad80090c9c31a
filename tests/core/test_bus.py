"""The message bus (ZStack's CloudBus): call/reply, send, publish/subscribe, timeouts, handler
failures and back-pressure, on real services."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import attrs
import pytest

from zstack_core import (
    CloudBus,
    ErrorCodeSpace,
    Event,
    Message,
    MessageReply,
    NeedReplyMessage,
    Service,
    ZStackError,
    handles,
)

Thing = ErrorCodeSpace(prefix="THING", codes={"1001": "thing is broken"})


@attrs.define(kw_only=True)
class AddMsg(NeedReplyMessage):
    SERVICE_ID = "calc"
    a: int = 0
    b: int = 0


@attrs.define(kw_only=True)
class AddSlowlyMsg(AddMsg):
    """A subtype: handled by its own handler."""


@attrs.define(kw_only=True)
class AddLoudlyMsg(AddMsg):
    """A subtype without its own handler: the AddMsg handler takes it."""


@attrs.define(kw_only=True)
class SumReply(MessageReply):
    total: int = 0


@attrs.define(kw_only=True)
class SleepMsg(NeedReplyMessage):
    SERVICE_ID = "calc"
    seconds: float = 0.0


@attrs.define(kw_only=True)
class FailMsg(NeedReplyMessage):
    SERVICE_ID = "calc"
    how: str = "plain"
    suspend_first: bool = False


@attrs.define(kw_only=True)
class NoteMsg(Message):
    SERVICE_ID = "calc"
    text: str = ""


@attrs.define(kw_only=True)
class GateMsg(NeedReplyMessage):
    SERVICE_ID = "calc"


@attrs.define(kw_only=True)
class UnhandledMsg(NeedReplyMessage):
    SERVICE_ID = "calc"


@attrs.define(kw_only=True)
class NowhereMsg(NeedReplyMessage):
    SERVICE_ID = "no-such-service"


class Calc(Service):
    id = "calc"

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.notes: list[str] = []
        self.sleeps_done: list[float] = []
        self.gate = asyncio.Event()
        self.gate_entered = 0

    @handles(AddMsg)
    async def add(self, msg: AddMsg) -> SumReply:
        self.tasks.append(asyncio.current_task())
        return SumReply(total=msg.a + msg.b)

    @handles(AddSlowlyMsg)
    async def add_slowly(self, msg: AddSlowlyMsg) -> SumReply:
        self.tasks.append(asyncio.current_task())
        await asyncio.sleep(0)
        self.tasks.append(asyncio.current_task())
        return SumReply(total=msg.a + msg.b)

    @handles(SleepMsg)
    async def sleep(self, msg: SleepMsg) -> None:
        await asyncio.sleep(msg.seconds)
        self.sleeps_done.append(msg.seconds)

    @handles(FailMsg)
    async def fail(self, msg: FailMsg) -> None:
        if msg.suspend_first:
            await asyncio.sleep(0)
        if msg.how == "zstack":
            raise Thing.exc("1001", "the thing fell over")
        raise ValueError("bad value 42")

    @handles(NoteMsg)
    async def note(self, msg: NoteMsg) -> None:
        await asyncio.sleep(0)
        self.notes.append(msg.text)
        if msg.text == "explode":
            raise RuntimeError("note exploded")

    @handles(GateMsg)
    async def wait_gate(self, msg: GateMsg) -> None:
        self.gate_entered += 1
        await self.gate.wait()


@pytest.fixture
def calc() -> Calc:
    return Calc()


@pytest.fixture
def bus(calc: Calc) -> CloudBus:
    bus = CloudBus()
    bus.register_service(calc)
    return bus


async def test_call_reply_eager_path(bus: CloudBus, calc: Calc) -> None:
    reply = await bus.call(AddMsg(a=2, b=3))
    assert isinstance(reply, SumReply) and reply.success and reply.total == 5
    # A handler that answers at once runs in the caller's task: no task, no loop iteration.
    assert calc.tasks == [asyncio.current_task()]
    assert bus.inflight == 0


async def test_call_reply_suspending_path(bus: CloudBus, calc: Calc) -> None:
    reply = await bus.call(AddSlowlyMsg(a=4, b=5))
    assert isinstance(reply, SumReply) and reply.total == 9
    before, after = calc.tasks
    assert before is asyncio.current_task()  # ran eagerly up to its first suspension...
    assert after is not None and after is not asyncio.current_task()  # ...then in its own task
    await asyncio.sleep(0)
    assert bus.inflight == 0


async def test_a_suspending_handler_lets_other_work_run() -> None:
    order: list[str] = []

    @attrs.define(kw_only=True)
    class YieldMsg(NeedReplyMessage):
        SERVICE_ID = "yielder"

    class Yielder(Service):
        id = "yielder"

        @handles(YieldMsg)
        async def handle(self, msg: YieldMsg) -> None:
            asyncio.get_running_loop().call_soon(order.append, "other work")
            await asyncio.sleep(0)  # one pass of the loop: what was ready runs first
            order.append("handler resumed")

    bus = CloudBus()
    bus.register_service(Yielder())
    assert (await bus.call(YieldMsg())).success
    assert order == ["other work", "handler resumed"]


async def test_handler_of_a_base_type_handles_subtypes(bus: CloudBus) -> None:
    reply = await bus.call(AddLoudlyMsg(a=1, b=1))
    assert isinstance(reply, SumReply) and reply.total == 2


async def test_handler_returning_none_is_a_success(bus: CloudBus, calc: Calc) -> None:
    reply = await bus.call(SleepMsg(seconds=0))
    assert type(reply) is MessageReply and reply.success
    assert calc.sleeps_done == [0]


async def test_many_concurrent_calls_get_their_own_replies(bus: CloudBus) -> None:
    msgs = [AddSlowlyMsg(a=i, b=i) if i % 2 else AddMsg(a=i, b=i) for i in range(500)]
    replies = await asyncio.gather(*(bus.call(m) for m in msgs))
    assert [r.total for r in replies] == [2 * i for i in range(500)]  # type: ignore[attr-defined]
    assert len({m.id for m in msgs}) == 500


async def test_service_id_given_when_calling(bus: CloudBus) -> None:
    other = Calc()
    other.id = "calc-2"
    bus.register_service(other)
    await bus.call(AddMsg(a=1, b=2), service_id="calc-2")
    assert len(other.tasks) == 1


async def test_send_delivers_without_waiting(bus: CloudBus, calc: Calc) -> None:
    assert bus.send(NoteMsg(text="hello")) is None  # type: ignore[func-returns-value]
    assert calc.notes == []
    await bus.drain()
    assert calc.notes == ["hello"]


async def test_send_failure_is_logged_not_raised(bus: CloudBus, calc: Calc, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="zstack.bus"):
        bus.send(NoteMsg(text="explode"))
        bus.send(NoteMsg(text="after"))
        await bus.drain()
    assert calc.notes == ["explode", "after"]
    assert any("note exploded" in r.getMessage() for r in caplog.records)


async def test_send_to_an_unknown_service_is_refused_at_once(bus: CloudBus) -> None:
    @attrs.define(kw_only=True)
    class Lost(Message):
        SERVICE_ID = "nobody"

    with pytest.raises(ZStackError) as info:
        bus.send(Lost())
    assert info.value.code == "SYS.1003"


@attrs.define(kw_only=True)
class HostEvent(Event):
    host: str = ""


@attrs.define(kw_only=True)
class HostDisconnected(HostEvent):
    reason: str = ""


async def test_publish_subscribe(bus: CloudBus) -> None:
    got: list[tuple[str, Event]] = []
    done = asyncio.Event()

    def any_event(e: Event) -> None:
        got.append(("any", e))

    def host(e: HostEvent) -> None:
        got.append(("host", e))

    async def disconnected(e: HostDisconnected) -> None:
        await asyncio.sleep(0)
        got.append(("disconnected", e))
        done.set()

    bus.subscribe(Event, any_event)
    bus.subscribe(HostEvent, host)
    bus.subscribe(HostDisconnected, disconnected)

    plain = HostEvent(host="h1")
    bus.publish(plain)
    assert got == [("host", plain), ("any", plain)]  # sync subscribers run at once

    got.clear()
    sub = HostDisconnected(host="h2", reason="ping lost")
    bus.publish(sub)
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(kind for kind, _ in got) == ["any", "disconnected", "host"]
    assert all(e is sub for _, e in got)  # subtypes reach base-type subscribers


async def test_unsubscribe_and_failing_subscribers(bus: CloudBus, caplog: pytest.LogCaptureFixture) -> None:
    got: list[str] = []

    def broken(e: HostEvent) -> None:
        raise RuntimeError("subscriber bug")

    async def broken_async(e: HostEvent) -> None:
        raise RuntimeError("async subscriber bug")

    bus.subscribe(HostEvent, broken)
    bus.subscribe(HostEvent, broken_async)
    unsubscribe = bus.subscribe(HostEvent, lambda e: got.append(e.host))
    with caplog.at_level(logging.ERROR, logger="zstack.bus"):
        bus.publish(HostEvent(host="a"))
        await bus.drain()
    assert got == ["a"]  # the others' failures do not stop delivery
    assert sum("raised" in r.getMessage() for r in caplog.records) == 2
    unsubscribe()
    unsubscribe()  # twice is harmless
    bus.publish(HostEvent(host="b"))
    await bus.drain()
    assert got == ["a"]


async def test_timeout_gives_sys_1001_and_the_handler_keeps_running(bus: CloudBus, calc: Calc) -> None:
    started = time.monotonic()
    reply = await bus.call(SleepMsg(seconds=0.3, timeout=0.05))
    waited = time.monotonic() - started
    assert reply.error is not None and reply.error.code == "SYS.1001"
    assert "SleepMsg" in reply.error.details and "0.05" in reply.error.details
    assert 0.05 <= waited < 0.25  # timeouts are kept in 50 ms buckets
    assert calc.sleeps_done == []
    assert bus.inflight == 1  # the work goes on: a caller's timeout does not cancel it
    await bus.drain()
    assert calc.sleeps_done == [0.3]


async def test_timeout_given_to_call_and_bus_default(bus: CloudBus) -> None:
    reply = await bus.call(SleepMsg(seconds=0.2), timeout=0.05)
    assert reply.error is not None and reply.error.code == "SYS.1001"
    assert "0.05" in reply.error.details
    bus.default_timeout = 0.05
    reply = await bus.call(SleepMsg(seconds=0.2))
    assert reply.error is not None and reply.error.code == "SYS.1001"
    reply = await bus.call(SleepMsg(seconds=0.01), timeout=1)
    assert reply.success
    await bus.drain()


async def test_a_cancelled_caller_does_not_cancel_the_handler(bus: CloudBus, calc: Calc) -> None:
    caller = asyncio.create_task(bus.call(SleepMsg(seconds=0.05)))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await bus.drain()
    assert calc.sleeps_done == [0.05]


@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "suspending"])
async def test_handler_raising_gives_sys_1000_and_the_bus_keeps_serving(
        bus: CloudBus, suspend_first: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="zstack.bus"):
        reply = await bus.call(FailMsg(suspend_first=suspend_first))
    assert reply.error is not None and reply.error.code == "SYS.1000"
    assert "ValueError: bad value 42" in reply.error.details and "FailMsg" in reply.error.details
    assert any(r.exc_info for r in caplog.records)  # the traceback is logged for the operator
    after = await bus.call(AddMsg(a=20, b=22))
    assert after.total == 42  # type: ignore[attr-defined]


@pytest.mark.parametrize("suspend_first", [False, True], ids=["eager", "suspending"])
async def test_handler_refusing_with_zstack_error(bus: CloudBus, suspend_first: bool) -> None:
    reply = await bus.call(FailMsg(how="zstack", suspend_first=suspend_first))
    assert reply.error is not None
    assert reply.error.code == "THING.1001" and reply.error.details == "the thing fell over"
    with pytest.raises(ZStackError) as info:
        await bus.call_ok(FailMsg(how="zstack"))
    assert info.value.code == "THING.1001"
    ok = await bus.call_ok(AddMsg(a=1, b=2))
    assert ok.total == 3


async def test_unknown_service_gives_sys_1003(bus: CloudBus) -> None:
    reply = await bus.call(NowhereMsg())
    assert reply.error is not None and reply.error.code == "SYS.1003"
    assert "no-such-service" in reply.error.details
    reply = await bus.call(AddMsg(), service_id="elsewhere")
    assert reply.error is not None and reply.error.code == "SYS.1003"


async def test_no_handler_gives_sys_1002(bus: CloudBus) -> None:
    reply = await bus.call(UnhandledMsg())
    assert reply.error is not None and reply.error.code == "SYS.1002"
    assert "UnhandledMsg" in reply.error.details and "calc" in reply.error.details


async def test_unregistered_service_is_unknown(bus: CloudBus) -> None:
    bus.unregister_service("calc")
    reply = await bus.call(AddMsg())
    assert reply.error is not None and reply.error.code == "SYS.1003"
    with pytest.raises(ValueError, match="already registered"):
        bus.register_service(Calc())
        bus.register_service(Calc())


async def test_max_inflight_back_pressure(calc: Calc) -> None:
    bus = CloudBus(max_inflight=3)
    bus.register_service(calc)
    holders = [asyncio.create_task(bus.call(GateMsg())) for _ in range(3)]
    await asyncio.sleep(0)
    assert bus.inflight == 3 and calc.gate_entered == 3

    reply = await bus.call(GateMsg())
    assert reply.error is not None and reply.error.code == "SYS.1005"
    assert calc.gate_entered == 3  # refused before the handler ran: retrying is safe
    reply = await bus.call(AddMsg(a=1, b=1))
    assert reply.error is not None and reply.error.code == "SYS.1005"
    assert calc.tasks == []
    with pytest.raises(ZStackError) as info:
        bus.send(NoteMsg(text="x"))
    assert info.value.code == "SYS.1005"

    calc.gate.set()
    replies = await asyncio.gather(*holders)
    assert all(r.success for r in replies)
    await asyncio.sleep(0)
    assert bus.inflight == 0
    assert (await bus.call(AddMsg(a=1, b=1))).success
    assert (await bus.call(GateMsg())).success
    assert calc.notes == []


async def test_drain_cancels_what_does_not_finish(bus: CloudBus, calc: Calc) -> None:
    bus.send(GateMsg())
    bus.send(SleepMsg(seconds=0.01))
    await asyncio.sleep(0)
    await bus.drain(timeout=0.1)
    assert calc.sleeps_done == [0.01]
    assert bus.inflight == 0
