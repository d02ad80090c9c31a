"""Which HTTP status an :class:`~zstack_core.errors.ErrorCode` answers with.

``SYS`` codes have fixed statuses (invalid argument 400, session 401, permission 403, not found
404, busy 503...). A plugin's codes answer what its ``ErrorCodeSpace.http_status`` says; codes it
does not list take the status of the first code in their cause chain that has one, else 400: a
plugin's error is the plugin refusing the request unless it says otherwise. A ``SYS.1006`` with a
cause only says that an operation failed (every flow chain failure is one): its cause decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ErrorCode

__all__ = ["SYS_STATUS", "status_of"]

SYS_STATUS: dict[str, int] = {
    "SYS.1000": 500,  # internal error: a bug
    "SYS.1001": 504,  # timeout
    "SYS.1002": 500,  # no handler: a plugin's wiring is wrong
    "SYS.1003": 500,  # no such service
    "SYS.1004": 404,  # resource not found
    "SYS.1005": 503,  # busy, retry later
    "SYS.1006": 500,  # operation failed on the server side (the cause says why)
    "SYS.1007": 400,  # invalid argument
    "SYS.1008": 404,  # unknown API / route
    "SYS.1009": 404,  # no such API job
    "SYS.1010": 500,  # a plugin's hook failed
    "SYS.1011": 409,  # not allowed in the current state
    "SYS.1012": 403,  # permission denied
    "SYS.1013": 401,  # session required or expired
    "SYS.1014": 503,  # node not running
    "SYS.1015": 409,  # already exists
}


def status_of(error: ErrorCode, spaces: Mapping[str, Any] | None = None) -> int:
    """The HTTP status for ``error``; ``spaces`` is ``prefix -> ErrorCodeSpace`` (or
    ``(plugin, space)`` as the node keeps them)."""
    for e in error.chain():  # outermost first: the first code with a known status decides
        if e.code == "SYS.1006" and e.cause is not None:
            # "Operation failed, the cause says why" (a flow chain wraps every failure in it):
            # the cause decides, so a create refused for want of a connected host is not a 500.
            continue
        if e.code in SYS_STATUS:
            return SYS_STATUS[e.code]
        prefix, _, number = e.code.partition(".")
        space = (spaces or {}).get(prefix)
        if isinstance(space, tuple):
            space = space[1]
        explicit = getattr(space, "http_status", {}).get(number)
        if explicit:
            return int(explicit)
    return 400
