"""JSON <-> attrs through one cattrs converter.

Field names are camelCase on the wire (``l3NetworkUuids``), as in ZStack's REST API, and
snake_case in Python. Unknown keys are refused. A structuring failure becomes ``SYS.1007`` naming
the field path, so a user sees ``$.memorySize: expected int`` rather than a traceback.
"""

from __future__ import annotations

import collections.abc
import re
import typing
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .errors import ErrorCode, ZStackError, invalid_argument

__all__ = ["converter", "structure", "unstructure", "camel"]

T = TypeVar("T")

_CAMEL = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


converter = cattrs.Converter(forbid_extra_keys=True)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _strict(kind: type, accepts: tuple[type, ...]) -> Any:
    # cattrs' default hooks coerce (str(1), int("3"), int(3.7)); an API must refuse instead.
    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got bool")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
            # Every database column is at most 64 bits: refuse here rather than fail on insert.
            raise ValueError(f"integer out of range: {value} (integers are 64-bit)")
        return kind(value)

    return hook


converter.register_structure_hook(str, _strict(str, (str,)))
converter.register_structure_hook(int, _strict(int, (int,)))
converter.register_structure_hook(float, _strict(float, (int, float)))
converter.register_structure_hook(bool, _strict(bool, (bool,)))
converter.register_structure_hook(ErrorCode, lambda d, _: ErrorCode.from_dict(d))
converter.register_unstructure_hook(ErrorCode, ErrorCode.to_dict)


def _is_list(kind: Any) -> bool:
    return kind is list or typing.get_origin(kind) in (list, collections.abc.Sequence, collections.abc.MutableSequence)


def _strict_list(kind: Any) -> Any:
    # cattrs makes a list of any iterable: "abc" would become ["a", "b", "c"] and {"a": 1}
    # ["a"]. A JSON list is the only list an API takes.
    items = list_structure_factory(kind, converter)

    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return items(value, type_)

    return hook


converter.register_structure_hook_factory(_is_list, _strict_list)


def _overrides(cls: type) -> dict[str, Any]:
    out = {}
    for a in attrs.fields(cls):
        if a.metadata.get("json") is False:
            out[a.name] = override(omit=True)
        else:
            out[a.name] = override(rename=camel(a.name))
    return out


converter.register_structure_hook_factory(
    attrs.has,
    lambda cls: make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **_overrides(cls)),
)
converter.register_unstructure_hook_factory(
    attrs.has,
    lambda cls: make_dict_unstructure_fn(cls, converter, **_overrides(cls)),
)


def structure(data: Any, cls: type[T]) -> T:
    """Build ``cls`` from JSON-like data or raise ``SYS.1007`` naming the first bad field."""
    if not isinstance(data, dict):
        raise invalid_argument(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}", "$")
    try:
        return converter.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        messages = cattrs.transform_error(exc, path=f"$")
        first = messages[0] if messages else str(exc)
        field = first.split(" @ ", 1)[1] if " @ " in first else "$"
        path = field
        # transform_error names python attributes; report the wire (camelCase) names.
        path = re.sub(r"\.([a-z0-9_]+)", lambda m: "." + camel(m.group(1)), path)
        reason = first.split(" @ ", 1)[0]
        raise invalid_argument(f"{path}: {reason}" + (f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""), path) from None
    except (TypeError, ValueError) as exc:
        raise invalid_argument(str(exc)) from None


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def error_of(exc: BaseException) -> ErrorCode | None:
    return exc.error if isinstance(exc, ZStackError) else None
