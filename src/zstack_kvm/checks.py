"""Argument checks shared by compute's APIs: each refuses with ``SYS.1007`` naming the field."""

from __future__ import annotations

from collections.abc import Sequence

from zstack_core import invalid_argument

__all__ = ["cascade_mode", "check_description", "check_name", "check_state_event", "STATE_OF_EVENT"]

STATE_OF_EVENT = {"enable": "Enabled", "disable": "Disabled"}


def check_name(value: str | None, field: str = "name") -> str:
    """A resource name: not blank, at most 255 characters; returned stripped."""
    if value is None or not value.strip():
        raise invalid_argument(f"{field} must not be empty", f"$.{field}")
    if len(value) > 255:
        raise invalid_argument(f"{field} is longer than 255 characters", f"$.{field}")
    return value.strip()


def check_description(value: str | None) -> None:
    if value is not None and len(value) > 2048:
        raise invalid_argument("description is longer than 2048 characters", "$.description")


def check_state_event(value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise invalid_argument(f"stateEvent must be one of {', '.join(allowed)}, got {value!r}", "$.stateEvent")
    return value


def cascade_mode(delete_mode: str) -> str:
    """``Permissive`` -> cascade ``delete`` (after a ``check`` any plugin may veto);
    ``Enforcing`` -> ``force``."""
    if delete_mode == "Permissive":
        return "delete"
    if delete_mode == "Enforcing":
        return "force"
    raise invalid_argument(f"deleteMode must be Permissive or Enforcing, got {delete_mode!r}", "$.deleteMode")
