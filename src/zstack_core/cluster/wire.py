"""What node-to-node requests carry, and how they are signed.

A message travels as JSON: its class's import path, the service it is for, its fields (the
kernel's cattrs rules: camelCase, strict types) and the headers the handler reads
(``account_uuid``, ``job_id``...). Only classes already loaded on the receiving node can come
back to life there: nothing is imported because a peer named it, and a message must be an attrs
:class:`~zstack_core.messages.NeedReplyMessage` that a local service handles.

Every request and response body is signed with HMAC-SHA256 under the cluster secret
(``X-ZStack-Cluster-Signature``). The secret itself never travels, so a captured request does
not give it away, and a body changed on the way fails the check.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import sys
from typing import Any

import attrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn

from ..errors import ErrorCode
from ..messages import Event, MessageReply, NeedReplyMessage
from ..serialize import _overrides, converter
from .errors import ClusterErrors

__all__ = [
    "NODE_HEADER",
    "SIGNATURE_HEADER",
    "class_path",
    "decode_event_batch",
    "decode_message",
    "decode_reply",
    "dumps",
    "encode_event_batch",
    "encode_message",
    "encode_reply",
    "error_body",
    "error_of",
    "find_loaded",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-ZStack-Cluster-Signature"
NODE_HEADER = "X-ZStack-Node"
"""On a request: the sending node. On every HTTP API response: the node that handled the call."""

# The kernel's converter plus datetimes (inventories carry them; the API's JSON renders them
# in its own way, so the wire gets its own copy rather than changing the kernel's).
wire = converter.copy()
wire.register_unstructure_hook(datetime.datetime, datetime.datetime.isoformat)
wire.register_structure_hook(
    datetime.datetime, lambda v, _: v if isinstance(v, datetime.datetime) else datetime.datetime.fromisoformat(v))
wire.register_structure_hook_factory(
    attrs.has, lambda cls: make_dict_structure_fn(cls, wire, _cattrs_forbid_extra_keys=True, **_overrides(cls)))
wire.register_unstructure_hook_factory(
    attrs.has, lambda cls: make_dict_unstructure_fn(cls, wire, **_overrides(cls)))


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    """True when ``signature`` is ``body``'s signature under ``secret`` (constant time)."""
    if not signature:
        return False
    return hmac.compare_digest(sign(secret, body), signature)


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def find_loaded(path: str) -> type | None:
    """The class at ``module:Qualname`` if its module is already imported; never imports."""
    module_name, _, qualname = path.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None or not qualname:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, ErrorCode):
        return value.to_dict()
    if attrs.has(type(value)):
        return wire.unstructure(value)
    raise TypeError(f"{type(value).__name__} is not serializable")


def dumps(data: Any) -> bytes:
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode()


def _headers(headers: dict[str, Any]) -> dict[str, Any]:
    # Headers are metadata set in-process (account, job id...); only plain values can travel.
    return {k: v for k, v in headers.items() if isinstance(v, (str, int, float, bool)) or v is None}


def encode_message(msg: NeedReplyMessage, service_id: str, timeout: float, sender: str) -> bytes:
    """The request body forwarding ``msg``; ``MN.1003`` if a field cannot be serialized."""
    try:
        return dumps({"type": class_path(type(msg)), "service": service_id, "id": msg.id, "timeout": timeout,
                      "headers": _headers(msg.headers), "from": sender, "body": wire.unstructure(msg)})
    except (TypeError, ValueError) as exc:
        raise ClusterErrors.exc("1003", f"{type(msg).__name__} cannot be sent to another management node: {exc}") from None


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ClusterErrors.exc("1004", f"the request is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterErrors.exc("1004", "the request is not a JSON object")
    return data


def decode_message(body: bytes, accepted: dict[str, type[NeedReplyMessage]]) -> tuple[NeedReplyMessage, str, float]:
    """``(message, service id, timeout)`` from a request body. ``accepted`` maps class paths to
    the message classes this node registered; other types are refused with ``MN.1004``."""
    data = _load(body)
    path, service = data.get("type"), data.get("service")
    if not isinstance(path, str) or not isinstance(service, str):
        raise ClusterErrors.exc("1004", "the request names no message type or service")
    cls = accepted.get(path)
    if cls is None:
        raise ClusterErrors.exc("1004", f"{path} is not a message type this management node handles")
    try:
        msg = wire.structure(data.get("body"), cls)
    except Exception as exc:  # noqa: BLE001 - cattrs raises a family of errors
        raise ClusterErrors.exc("1004", f"cannot read {cls.__name__}: {exc}") from None
    if isinstance(data.get("id"), str):
        msg.id = data["id"]
    headers = data.get("headers")
    if isinstance(headers, dict):
        msg.headers.update(headers)
    msg.headers["forwarded_from"] = data.get("from")
    timeout = data.get("timeout")
    return msg, service, float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 30.0


def encode_reply(reply: MessageReply, handler: str) -> bytes:
    try:
        return dumps({"type": class_path(type(reply)), "node": handler, "body": wire.unstructure(reply)})
    except (TypeError, ValueError) as exc:
        error = ClusterErrors.error("1003", f"{type(reply).__name__} cannot be sent back to the calling "
                                            f"management node: {exc}")
        return dumps({"type": class_path(MessageReply), "node": handler, "body": {"error": error.to_dict()}})


def decode_reply(body: bytes) -> MessageReply:
    data = _load(body)
    path = data.get("type")
    cls = find_loaded(path) if isinstance(path, str) else None
    if cls is None or not attrs.has(cls) or not issubclass(cls, MessageReply):
        raise ClusterErrors.exc("1004", f"the owner answered with {path!r}, not a reply type loaded here")
    try:
        return wire.structure(data.get("body"), cls)
    except Exception as exc:  # noqa: BLE001
        raise ClusterErrors.exc("1004", f"cannot read the owner's {cls.__name__}: {exc}") from None


def encode_event_batch(events: list[Event], sender: str) -> bytes:
    return dumps({"from": sender, "events": [{"type": class_path(type(e)), "body": wire.unstructure(e)}
                                             for e in events]})


def decode_event_batch(body: bytes, accept: Any) -> list[Event]:
    """Events of a batch whose type ``accept(cls)`` allows (has local subscribers); others are
    skipped: there is nobody here to tell."""
    data = _load(body)
    out: list[Event] = []
    for item in data.get("events") or []:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ClusterErrors.exc("1004", "an event without a type")
        cls = find_loaded(item["type"])
        if cls is None or not attrs.has(cls) or not issubclass(cls, Event) or not accept(cls):
            continue
        try:
            out.append(wire.structure(item.get("body"), cls))
        except Exception as exc:  # noqa: BLE001
            raise ClusterErrors.exc("1004", f"cannot read {cls.__name__}: {exc}") from None
    return out


def error_body(error: ErrorCode) -> bytes:
    return dumps({"error": error.to_dict()})


def error_of(body: bytes, status: int) -> ErrorCode:
    """The ErrorCode a peer answered a failed request with (or one saying what happened)."""
    try:
        data = json.loads(body)
        return ErrorCode.from_dict(data["error"])
    except (ValueError, KeyError, TypeError):
        return ClusterErrors.error("1004", f"the peer answered HTTP {status}: {body[:200]!r}")
