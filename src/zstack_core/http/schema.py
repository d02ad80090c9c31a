"""JSON Schema of message and inventory classes, and text -> value by schema.

The OpenAPI document, the ``/v1/apis`` table and the ``zstack api`` command all describe a
message by the JSON Schema of its attrs fields (camelCase names, as on the wire). The same schema
turns text (a query-string parameter, a ``key=value`` on the command line) into a typed value,
so the server and the CLI parse ``memorySize=1024`` and ``l3NetworkUuids=a,b`` the same way.
"""

from __future__ import annotations

import datetime
import enum
import json
import types
import typing
from collections import abc
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import ErrorCode
from ..serialize import camel

__all__ = ["SchemaBuilder", "coerce_text", "resolve"]

_NONE_TYPE = type(None)


class SchemaBuilder:
    """Builds schemas, collecting each attrs class once under ``components`` (``$ref``)."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._names: dict[type, str] = {}

    # -- classes ------------------------------------------------------------------------------

    def name_of(self, cls: type) -> str:
        name = self._names.get(cls)
        if name is None:
            name = cls.__name__
            if name in self._names.values():  # two plugins with one class name
                name = f"{cls.__module__.replace('.', '_')}_{cls.__name__}"
            self._names[cls] = name
        return name

    def ref(self, cls: type) -> dict[str, Any]:
        """``{"$ref": ...}`` to ``cls``, adding its schema to ``components`` the first time."""
        name = self.name_of(cls)
        if name not in self.components:
            self.components[name] = {}  # placeholder first: classes may refer to themselves
            self.components[name] = self.object_schema(cls)
        return {"$ref": f"#/components/schemas/{name}"}

    def object_schema(self, cls: type) -> dict[str, Any]:
        """The schema of an attrs class: its wire fields, the required ones, nothing else."""
        if cls is ErrorCode:
            return self._error_code()
        hints = _hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for a in attrs.fields(cls):
            if a.metadata.get("json") is False:
                continue
            key = camel(a.name)
            properties[key] = self.of_type(hints.get(a.name, Any))
            if a.default is attrs.NOTHING:
                required.append(key)
        out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            out["required"] = required
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):  # attrs' generated repr-like docs say nothing
            out["description"] = doc
        return out

    def _error_code(self) -> dict[str, Any]:
        return {
            "type": "object",
            "description": "A failure with the failure that caused it (ZStack's ErrorCode).",
            "properties": {
                "code": {"type": "string", "examples": ["SYS.1007"]},
                "description": {"type": "string"},
                "details": {"type": "string"},
                "opaque": {"type": "object"},
                "cause": {"$ref": "#/components/schemas/ErrorCode"},
            },
            "required": ["code", "description", "details"],
        }

    # -- types --------------------------------------------------------------------------------

    def of_type(self, tp: Any) -> dict[str, Any]:
        if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)):
            return {}
        if tp is _NONE_TYPE or tp is None:
            return {"type": "null"}
        if tp is bool:
            return {"type": "boolean"}
        if tp is int:
            return {"type": "integer"}
        if tp is float:
            return {"type": "number"}
        if tp is str:
            return {"type": "string"}
        if tp is bytes:
            return {"type": "string", "contentEncoding": "base64"}
        if tp is datetime.datetime:
            return {"type": "string", "format": "date-time"}
        if tp is datetime.date:
            return {"type": "string", "format": "date"}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"enum": [m.value for m in tp]}
        if isinstance(tp, type) and (attrs.has(tp) or tp is ErrorCode):
            return self.ref(tp)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not _NONE_TYPE]
            nullable = len(options) != len(args)
            if len(options) == 1:
                inner = self.of_type(options[0])
                if not nullable:
                    return inner
                if set(inner) == {"type"} and isinstance(inner["type"], str):
                    return {"type": [inner["type"], "null"]}
                return {"anyOf": [inner, {"type": "null"}]}
            return {"anyOf": [self.of_type(a) for a in options] + ([{"type": "null"}] if nullable else [])}
        if origin is typing.Literal:
            return {"enum": list(args)}
        if origin in (list, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Set, abc.Iterable):
            return {"type": "array", "items": self.of_type(args[0]) if args else {}}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.of_type(args[0])}
            return {"type": "array", "prefixItems": [self.of_type(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if origin in (dict, abc.Mapping, abc.MutableMapping):
            return {"type": "object", "additionalProperties": self.of_type(args[1]) if len(args) == 2 else {}}
        if tp in (list, set, tuple, frozenset):
            return {"type": "array"}
        if tp is dict:
            return {"type": "object"}
        return {}


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> type, with string annotations resolved where the module allows."""
    try:
        attrs.resolve_types(cls)
        return {a.name: a.type for a in attrs.fields(cls)}
    except Exception:  # an annotation naming something only imported under TYPE_CHECKING
        out: dict[str, Any] = {}
        for a in attrs.fields(cls):
            out[a.name] = a.type if not isinstance(a.type, str) else Any
        return out


def resolve(schema: Mapping[str, Any], components: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with a top-level ``$ref`` followed."""
    seen = 0
    while "$ref" in schema and seen < 32:
        schema = components.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        seen += 1
    return schema


def _types(schema: Mapping[str, Any], components: Mapping[str, Any]) -> tuple[list[str], Mapping[str, Any]]:
    """The JSON types ``schema`` allows (without ``null``) and the schema for items/objects."""
    schema = resolve(schema, components)
    if "anyOf" in schema:
        found: list[str] = []
        inner: Mapping[str, Any] = {}
        for option in schema["anyOf"]:
            kinds, sub = _types(option, components)
            found += [k for k in kinds if k not in found]
            if sub:
                inner = sub
        return found, inner
    if "enum" in schema:
        kinds = sorted({_json_type(v) for v in schema["enum"]} - {"null"})
        return kinds, schema
    kind = schema.get("type")
    if kind is None:
        return ["any"], schema
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return [k for k in kinds if k != "null"], schema


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def coerce_text(text: str, schema: Mapping[str, Any], components: Mapping[str, Any] | None = None) -> Any:
    """The value of ``text`` for a field of ``schema``; raises ``ValueError`` saying what was
    expected.

    Strings stay text; ``null`` is None where allowed; numbers and booleans are parsed; arrays are
    JSON (``["a","b"]``) or comma-separated (``a,b``, each item parsed by the item schema);
    objects and untyped fields are JSON (untyped text that is not JSON stays text).
    """
    components = components or {}
    kinds, sub = _types(schema, components)
    nullable = _allows_null(schema, components)
    stripped = text.strip()
    if nullable and stripped == "null" and "string" not in kinds:
        return None
    if "string" in kinds:
        return text
    if "integer" in kinds:
        try:
            return int(stripped)
        except ValueError:
            if "number" not in kinds:
                raise ValueError(f"expected an integer, got {text!r}") from None
    if "number" in kinds:
        try:
            value = float(stripped)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    if "boolean" in kinds:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if "array" in kinds:
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except ValueError as exc:
                raise ValueError(f"expected a JSON array: {exc}") from None
            if not isinstance(value, list):
                raise ValueError("expected a JSON array")
            return value
        items = sub.get("items", {}) if isinstance(sub, Mapping) else {}
        if not stripped:
            return []
        return [coerce_text(part.strip(), items, components) for part in stripped.split(",")]
    if "object" in kinds:
        try:
            value = json.loads(stripped)
        except ValueError as exc:
            raise ValueError(f"expected a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        return value
    # untyped (Any): JSON when it parses, else the text itself
    try:
        return json.loads(stripped)
    except ValueError:
        return text


def _allows_null(schema: Mapping[str, Any], components: Mapping[str, Any]) -> bool:
    schema = resolve(schema, components)
    if "anyOf" in schema:
        return any(_allows_null(o, components) for o in schema["anyOf"])
    kind = schema.get("type")
    return kind == "null" or (isinstance(kind, list) and "null" in kind) or not schema
