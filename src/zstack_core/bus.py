"""The message bus (ZStack's ``CloudBus``): services talk only by sending messages.

``call`` sends a message to a service and awaits its reply, or a ``SYS.1001`` timeout reply;
``send`` is fire-and-forget; ``publish`` hands an event to every subscriber of its type. Each
delivered message runs as its own task, so a slow handler never holds up others, and a handler
that raises gives its caller an error reply while the node keeps serving.

Timeouts are kept in coarse buckets (one timer per 50 ms of deadlines, not one per call), as
ZStack's bus keeps a single timeout manager: per-call timers would cost more than the round trip.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from .errors import SysErrors, ZStackError, err
from .messages import Event, Message, MessageReply, NeedReplyMessage
from .service import Service

__all__ = ["CloudBus", "Router"]

log = logging.getLogger("zstack.bus")

R = TypeVar("R", bound=MessageReply)
Handler = Callable[[Message], Awaitable[MessageReply | None]]
Subscriber = Callable[[Any], Awaitable[None] | None]

_BUCKET = 0.05


class Router(Protocol):
    """Where messages about a resource go when several nodes share the work (the cluster layer).

    ``route`` returns None to handle ``msg`` here, or an awaitable of the reply that the owner
    of ``resource_uuid`` gave; ``publish`` hands an event to the other nodes.
    """

    def route(self, msg: NeedReplyMessage, service_id: str, resource_uuid: str,
              timeout: float | None) -> Awaitable[MessageReply] | None: ...

    def publish(self, event: Event) -> None: ...


class CloudBus:
    """Routes messages to the services registered on this node."""

    def __init__(self, default_timeout: float = 30.0, max_inflight: int = 100_000) -> None:
        self.default_timeout = default_timeout
        self.max_inflight = max_inflight
        self._routes: dict[str, dict[type[Message], Handler]] = {}
        self._route_cache: dict[tuple[str, type[Message]], Handler | None] = {}
        self._subscribers: dict[type[Event], list[Subscriber]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._buckets: dict[int, dict[asyncio.Future[Any], tuple[Message, float]]] = {}
        self.router: Router | None = None
        """Set by the cluster layer: consulted for messages sent with a ``resource_uuid``."""

    # -- services -----------------------------------------------------------------------------

    def register_service(self, service: Service) -> None:
        if service.id in self._routes:
            raise ValueError(f"service id {service.id!r} is already registered")
        self._routes[service.id] = dict(service.handlers())
        self._route_cache.clear()

    def unregister_service(self, service_id: str) -> None:
        self._routes.pop(service_id, None)
        self._route_cache.clear()

    def has_service(self, service_id: str) -> bool:
        return service_id in self._routes

    def message_types(self) -> set[type[Message]]:
        """Every message type some registered service has a handler for."""
        return {mtype for routes in self._routes.values() for mtype in routes}

    def has_subscribers(self, event_type: type[Event]) -> bool:
        """True when something here subscribed to ``event_type`` or one of its base types."""
        return any(self._subscribers.get(klass) for klass in event_type.__mro__)

    def _handler(self, service_id: str, mtype: type[Message]) -> Handler | None:
        key = (service_id, mtype)
        try:
            return self._route_cache[key]
        except KeyError:
            pass
        routes = self._routes.get(service_id)
        handler = None
        if routes is not None:
            for klass in mtype.__mro__:  # a handler of a base type handles its subtypes
                handler = routes.get(klass)
                if handler is not None:
                    break
        self._route_cache[key] = handler
        return handler

    # -- delivery -----------------------------------------------------------------------------

    def _route(self, msg: Message, service_id: str | None) -> Handler:
        sid = service_id or msg.SERVICE_ID
        handler = self._handler(sid, type(msg))
        if handler is None:
            if sid not in self._routes:
                raise SysErrors.exc("1003", f"no service {sid!r} for {type(msg).__name__}")
            raise SysErrors.exc("1002", f"service {sid!r} has no handler for {type(msg).__name__}")
        return handler

    async def _invoke(self, handler: Handler, msg: Message) -> MessageReply:
        try:
            reply = await handler(msg)
        except ZStackError as exc:
            return MessageReply(error=exc.error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("handler %s raised on %s", getattr(handler, "__qualname__", handler), type(msg).__name__)
            return MessageReply(error=err("1000", f"{type(exc).__name__}: {exc} (handling {type(msg).__name__})"))
        return MessageReply() if reply is None else reply

    async def _deliver_resumed(self, coro: Any, first: Any, fut: asyncio.Future[MessageReply]) -> None:
        reply = await _Resume(coro, first)
        if not fut.done():
            fut.set_result(reply)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        if len(self._tasks) >= self.max_inflight:
            if inspect.iscoroutine(coro):
                coro.close()
            raise SysErrors.exc("1005", f"{len(self._tasks)} messages in flight on this node")
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def call(self, msg: NeedReplyMessage, service_id: str | None = None, timeout: float | None = None,
                   resource_uuid: str | None = None) -> MessageReply:
        """Send ``msg`` and await its reply. Never raises for the handler's failures: the reply
        carries the ErrorCode (``SYS.1001`` on timeout, ``SYS.1003`` for an unknown service).

        ``resource_uuid`` names the resource the message is about: when several nodes share the
        database, the node owning that resource handles it (forwarded over HTTP if that is
        another node)."""
        if resource_uuid is not None and self.router is not None:
            remote = self.router.route(msg, service_id or msg.SERVICE_ID, resource_uuid, timeout)
            if remote is not None:
                return await remote
        try:
            handler = self._route(msg, service_id)
        except ZStackError as exc:
            return MessageReply(error=exc.error)
        if len(self._tasks) >= self.max_inflight:
            # Refuse before the handler runs: "busy, retry later" must mean nothing was done.
            return MessageReply(error=err("1005", f"{len(self._tasks)} messages in flight on this node"))
        # Run the handler eagerly up to its first suspension (as Python 3.12's eager tasks do):
        # a handler that answers at once costs no task and no loop iteration. One that suspends
        # goes on in its own task, so a caller's timeout never cancels the work itself.
        coro = self._invoke(handler, msg)
        try:
            first = coro.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[MessageReply] = loop.create_future()
        try:
            self._spawn(self._deliver_resumed(coro, first, fut))
        except ZStackError as exc:
            coro.close()
            return MessageReply(error=exc.error)
        limit = timeout if timeout is not None else (msg.timeout if msg.timeout is not None else self.default_timeout)
        bucket = self._arm(loop, fut, msg, limit)
        try:
            return await fut
        finally:
            bucket.pop(fut, None)

    async def call_ok(self, msg: NeedReplyMessage, service_id: str | None = None, timeout: float | None = None,
                      resource_uuid: str | None = None) -> Any:
        """Like :meth:`call` but raise ``ZStackError`` for an error reply; return the reply."""
        reply = await self.call(msg, service_id, timeout, resource_uuid)
        if reply.error is not None:
            raise ZStackError(reply.error)
        return reply

    def send(self, msg: Message, service_id: str | None = None) -> None:
        """Deliver ``msg`` without waiting; failures are logged."""
        handler = self._route(msg, service_id)
        self._spawn(self._send(handler, msg))

    async def _send(self, handler: Handler, msg: Message) -> None:
        reply = await self._invoke(handler, msg)
        if reply.error is not None:
            log.error("%s failed: %s", type(msg).__name__, reply.error)

    # -- timeouts -----------------------------------------------------------------------------

    def _arm(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], msg: Message,
             limit: float) -> dict[asyncio.Future[Any], tuple[Message, float]]:
        key = int((loop.time() + limit) / _BUCKET) + 1
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            loop.call_at(key * _BUCKET, self._expire, key)
        bucket[fut] = (msg, limit)
        return bucket

    def _expire(self, key: int) -> None:
        for fut, (msg, limit) in self._buckets.pop(key, {}).items():
            if not fut.done():
                fut.set_result(MessageReply(error=err("1001", f"{type(msg).__name__} got no reply in {limit:g}s")))

    # -- events -------------------------------------------------------------------------------

    def subscribe(self, event_type: type[Event], callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every published ``event_type`` (or subtype). Returns a
        function that unsubscribes."""
        self._subscribers.setdefault(event_type, []).append(callback)

        def unsubscribe() -> None:
            subs = self._subscribers.get(event_type, [])
            if callback in subs:
                subs.remove(callback)

        return unsubscribe

    def publish(self, event: Event, *, local_only: bool = False) -> None:
        """Hand ``event`` to its subscribers, on this node and (through the router) on the other
        nodes; async ones run as tasks, failures are logged. ``local_only``: this node's
        subscribers only (an event that came from another node)."""
        if self.router is not None and not local_only:
            self.router.publish(event)
        for klass in type(event).__mro__:
            for callback in list(self._subscribers.get(klass, ())):
                try:
                    result = callback(event)
                    if inspect.isawaitable(result):
                        self._spawn(self._guard(result, callback, event))
                except Exception:
                    log.exception("subscriber %r of %s raised", callback, type(event).__name__)

    async def _guard(self, awaitable: Awaitable[None], callback: Subscriber, event: Event) -> None:
        try:
            await awaitable
        except Exception:
            log.exception("subscriber %r of %s raised", callback, type(event).__name__)

    # -- shutdown -----------------------------------------------------------------------------

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for in-flight messages to finish, then cancel what is left."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @property
    def inflight(self) -> int:
        return len(self._tasks)


class _Resume:
    """Awaitable that continues a coroutine already stepped once outside any task.

    It re-yields what the coroutine yielded (the future it waits on) to the task running it, and
    forwards whatever the task sends or throws back in: ``yield from`` for a started coroutine.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Any:
        coro, value = self.coro, self.first
        if value is None:
            # A bare yield (``asyncio.sleep(0)``) asks for one pass of the loop, and this task's
            # first step already runs on a later pass: resume now rather than spend another.
            try:
                value = coro.send(None)
            except StopIteration as done:
                return done.value
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # noqa: BLE001 - cancellation is forwarded too
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value
