"""Error codes: the one shape every failure a user sees takes.

As in ZStack's ``ErrorCode``: a code such as ``SYS.1001`` (prefix + number), a short description
that says what kind of failure it is, details that say what happened this time, and the cause that
led to it, so a failed VM create can say "allocating an IP failed because the range is full".
Each plugin registers the prefix it owns (see :class:`ErrorCodeSpace`).
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = [
    "ErrorCode",
    "ErrorCodeSpace",
    "SysErrors",
    "ZStackError",
    "err",
    "invalid_argument",
    "operr",
]


@attrs.frozen(kw_only=True)
class ErrorCode:
    """A failure, with the failure that caused it.

    ``code`` is ``PREFIX.NUMBER``; ``description`` is fixed per code; ``details`` is this
    occurrence; ``cause`` chains to the underlying error; ``opaque`` carries structured facts
    (for example the field path of an invalid argument).
    """

    code: str
    description: str
    details: str = ""
    cause: ErrorCode | None = None
    opaque: dict[str, Any] = attrs.field(factory=dict)

    def __str__(self) -> str:
        text = f"{self.code} {self.description}"
        if self.details:
            text += f": {self.details}"
        if self.cause is not None:
            text += f" (caused by {self.cause})"
        return text

    def chain(self) -> list[ErrorCode]:
        """This error followed by its causes, outermost first."""
        out: list[ErrorCode] = []
        e: ErrorCode | None = self
        while e is not None:
            out.append(e)
            e = e.cause
        return out

    def root_cause(self) -> ErrorCode:
        return self.chain()[-1]

    def caused(self, code: str) -> bool:
        """True when this error or any of its causes has ``code``."""
        return any(e.code == code for e in self.chain())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "description": self.description, "details": self.details}
        if self.opaque:
            out["opaque"] = self.opaque
        if self.cause is not None:
            out["cause"] = self.cause.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorCode:
        cause = data.get("cause")
        return cls(
            code=data["code"],
            description=data.get("description", ""),
            details=data.get("details", ""),
            cause=cls.from_dict(cause) if cause else None,
            opaque=dict(data.get("opaque") or {}),
        )


class ZStackError(Exception):
    """Raised to carry an :class:`ErrorCode` through Python code.

    Handlers, interceptors and flows raise it; the bus turns it into an error reply, and the API
    layer into the error a user sees.
    """

    def __init__(self, error: ErrorCode) -> None:
        super().__init__(str(error))
        self.error = error

    @property
    def code(self) -> str:
        return self.error.code


@attrs.frozen(kw_only=True)
class ErrorCodeSpace:
    """A prefix of error codes that a plugin owns, with the codes it defines.

    Returned from the ``zstack_error_codes`` hook. Two plugins claiming one prefix stop start-up.
    """

    prefix: str
    codes: dict[str, str] = attrs.field(factory=dict)
    """number -> description, e.g. ``{"1005": "host is unreachable"}``."""
    http_status: dict[str, int] = attrs.field(factory=dict)
    """number -> the HTTP status the REST API answers with, e.g. ``{"1005": 503}``; codes not
    listed answer 400 (the request was refused), or the status of a ``SYS`` code in their cause
    chain."""

    def __attrs_post_init__(self) -> None:
        if not self.prefix or not self.prefix.replace("_", "").isalnum() or not self.prefix.isupper():
            raise ValueError(f"error code prefix must be upper-case letters, got {self.prefix!r}")

    def error(self, number: str, details: str = "", cause: ErrorCode | None = None, **opaque: Any) -> ErrorCode:
        """Make the error ``PREFIX.number`` of this space."""
        description = self.codes.get(number)
        if description is None:
            raise KeyError(f"{self.prefix}.{number} is not declared in this error code space")
        return ErrorCode(code=f"{self.prefix}.{number}", description=description, details=details,
                         cause=cause, opaque=opaque)

    def exc(self, number: str, details: str = "", cause: ErrorCode | None = None, **opaque: Any) -> ZStackError:
        """The :class:`ZStackError` for ``error(number, ...)``, ready to raise."""
        return ZStackError(self.error(number, details, cause, **opaque))


SysErrors = ErrorCodeSpace(
    prefix="SYS",
    codes={
        "1000": "internal error",
        "1001": "operation timeout",
        "1002": "no handler for the message",
        "1003": "no such service",
        "1004": "resource not found",
        "1005": "too busy, retry later",
        "1006": "operation failed",
        "1007": "invalid argument",
        "1008": "unknown API",
        "1009": "API job not found",
        "1010": "plugin failure",
        "1011": "operation not permitted in the current state",
        "1012": "permission denied",
        "1013": "session required or expired",
        "1014": "management node is not running",
        "1015": "resource already exists",
    },
)
"""The kernel's own codes (prefix ``SYS``)."""


def err(number: str, details: str = "", cause: ErrorCode | None = None, **opaque: Any) -> ErrorCode:
    """A ``SYS`` error code."""
    return SysErrors.error(number, details, cause, **opaque)


def operr(details: str, cause: ErrorCode | None = None) -> ErrorCode:
    """``SYS.1006``: an operation failed; ``details`` says how."""
    return SysErrors.error("1006", details, cause)


def invalid_argument(details: str, field: str | None = None) -> ZStackError:
    """``SYS.1007``, naming the field path when there is one."""
    opaque = {"field": field} if field else {}
    return ZStackError(SysErrors.error("1007", details, **opaque))
