"""Message types carried by the bus (ZStack's ``Message`` hierarchy).

A message says what should happen; the service named by ``SERVICE_ID`` (or the ``service_id``
given when sending) handles it. API messages are the ones users send; everything else is the
conversation between services. All are attrs classes so they can be built from JSON by cattrs.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, ClassVar

import attrs

from .errors import ErrorCode

__all__ = [
    "APIEvent",
    "APIMessage",
    "APIReply",
    "Event",
    "Message",
    "MessageReply",
    "NeedReplyMessage",
    "new_message_id",
]

# Message ids must be unique across nodes but cheap: the bus makes one per message, and
# uuid4() alone costs more than the local round trip we want.
_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_message_id() -> str:
    return f"{_id_prefix}-{next(_id_counter):x}"


@attrs.define(kw_only=True)
class Message:
    """Base of every message. ``SERVICE_ID`` names the service that handles it by default."""

    SERVICE_ID: ClassVar[str] = ""

    id: str = attrs.field(factory=new_message_id, eq=False, metadata={"json": False})
    headers: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False, metadata={"json": False})


@attrs.define(kw_only=True)
class NeedReplyMessage(Message):
    """A message whose sender waits for a :class:`MessageReply`.

    ``timeout`` (seconds) overrides the bus default; on expiry the caller gets ``SYS.1001``.
    """

    timeout: float | None = attrs.field(default=None, eq=False, metadata={"json": False})


@attrs.define(kw_only=True)
class MessageReply:
    """The answer to a :class:`NeedReplyMessage`: success, or an :class:`ErrorCode`."""

    error: ErrorCode | None = None

    @property
    def success(self) -> bool:
        return self.error is None


@attrs.define(kw_only=True)
class Event:
    """Published to every subscriber of its type (and of its base types)."""

    id: str = attrs.field(factory=new_message_id, eq=False)


@attrs.define(kw_only=True)
class APIMessage(NeedReplyMessage):
    """A message users send through the API.

    Subclasses set ``API_NAME`` (``CreateZone``), may set ``LONG_RUNNING`` (the API answers with a
    job) and declare their fields. ``system_tags`` and ``user_tags`` are accepted by every API, as
    in ZStack. ``session_uuid`` comes from the caller's session, never from the message body.
    """

    API_NAME: ClassVar[str] = ""
    LONG_RUNNING: ClassVar[bool] = False

    system_tags: list[str] = attrs.field(factory=list)
    user_tags: list[str] = attrs.field(factory=list)
    session_uuid: str | None = attrs.field(default=None, eq=False, repr=False, metadata={"json": False})

    @property
    def account_uuid(self) -> str | None:
        """The account calling this API (set by the identity layer from the session); None for
        in-process calls without a session, which act as admin."""
        return self.headers.get("account_uuid")

    @classmethod
    def api_name(cls) -> str:
        return cls.API_NAME or cls.__name__.removeprefix("API").removesuffix("Msg")


@attrs.define(kw_only=True)
class APIReply(MessageReply):
    """The answer to a read-only API (queries, gets)."""


@attrs.define(kw_only=True)
class APIEvent(MessageReply):
    """The answer to an API that changes something (ZStack answers those with an event)."""
