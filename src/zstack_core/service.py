"""Services: the units that handle messages (ZStack's ``Service`` and ``Component``).

A service has an ``id`` (the address messages are sent to), ``start``/``stop`` called by the node
in order, and handlers for the message types it accepts, declared with :func:`handles`::

    class ZoneService(Service):
        id = "zone"

        @handles(APICreateZoneMsg)
        async def create_zone(self, msg: APICreateZoneMsg) -> APICreateZoneEvent:
            ...

A handler returns the reply (or None for a message that needs none) and raises ``ZStackError``
to fail; the bus turns either into the reply the sender awaits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .messages import Message, MessageReply

if TYPE_CHECKING:
    from .node import ManagementNode

__all__ = ["Service", "handles"]

M = TypeVar("M", bound=Message)
Handler = Callable[[Any, Any], Awaitable[MessageReply | None]]


def handles(*message_types: type[Message]) -> Callable[[Handler], Handler]:
    """Mark a coroutine method as the handler of ``message_types``."""

    def mark(fn: Handler) -> Handler:
        fn.__zstack_handles__ = message_types  # type: ignore[attr-defined]
        return fn

    return mark


class Service:
    """Base of every service. Subclasses set ``id`` and may set ``start_order`` (lower first)."""

    id: str = ""
    start_order: int = 100
    node: ManagementNode

    def __init__(self) -> None:
        if not self.id:
            raise TypeError(f"{type(self).__name__} must set a service id")

    def handlers(self) -> dict[type[Message], Callable[[Message], Awaitable[MessageReply | None]]]:
        """Message type -> bound handler, from the methods marked with :func:`handles`."""
        out: dict[type[Message], Callable[[Message], Awaitable[MessageReply | None]]] = {}
        for klass in reversed(type(self).__mro__):
            for name, fn in vars(klass).items():
                for mtype in getattr(fn, "__zstack_handles__", ()):
                    # Two mixins may each have a handler called ``attach``: getattr would give
                    # both messages the one the MRO picks. Bind each marked function itself,
                    # unless a subclass overrides it with a plain (unmarked) method.
                    resolved = getattr(type(self), name, None)
                    if resolved is fn or not hasattr(resolved, "__zstack_handles__"):
                        out[mtype] = getattr(self, name)
                    else:
                        out[mtype] = fn.__get__(self, type(self))
        return out

    async def start(self) -> None:
        """Called once when the node starts, in ``start_order``; raise to fail the start."""

    async def stop(self) -> None:
        """Called once when the node stops, in reverse order."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r}>"
