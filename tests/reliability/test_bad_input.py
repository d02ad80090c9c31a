"""Bad input: any JSON given to any registered API message either structures into the message
or is refused with ``SYS.1007`` (invalid argument) naming where; nothing else escapes.

hypothesis draws three kinds of bodies for every API of every installed plugin (and the
kernel's): any JSON value at all; objects whose keys are the message's own wire names (plus
strangers) with any JSON values; and objects whose values are of roughly the right JSON kind
(so the structuring goes deep: lists of the wrong element, integers beyond 64 bits, nested
objects where a string belongs). schemathesis does the same over HTTP in test_openapi_fuzz.py.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zstack_core import APIMessage, ManagementNode, ZStackError, unstructure
from zstack_core.http.schema import SchemaBuilder

_NODE: ManagementNode | None = None


def inspected_node() -> ManagementNode:
    """Every installed plugin's registrations, collected without starting anything."""
    global _NODE
    if _NODE is None:
        import tempfile

        node = ManagementNode(data_dir=tempfile.mkdtemp(prefix="zstack-bad-input-"), config={})
        node.inspect()
        _NODE = node
    return _NODE


API_NAMES = sorted(inspected_node().api.registrations)

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def wire_fields(message: type[APIMessage]) -> dict[str, Any]:
    return dict(SchemaBuilder().object_schema(message).get("properties", {}))


def value_like(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A JSON value of about the kind ``schema`` describes: right kind, wrong details."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    options: list[st.SearchStrategy[Any]] = [json_values]
    if "string" in kinds:
        options.append(st.text(max_size=300) | st.sampled_from(["", " ", "\x00", "a" * 5000, "☃", "%", "\\"]))
    if "integer" in kinds or "number" in kinds:
        options.append(st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 1.5, math.inf]))
    if "boolean" in kinds:
        options.append(st.sampled_from([True, False, "true", 0, 1]))
    if "array" in kinds:
        options.append(st.lists(json_values, max_size=5))
    if "object" in kinds or "$ref" in schema:
        options.append(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
    return st.one_of(options)


@functools.cache
def bodies(api_name: str) -> st.SearchStrategy[Any]:
    fields = wire_fields(inspected_node().api.message_class(api_name))
    own_keys = st.dictionaries(st.sampled_from(sorted(fields)) if fields else st.text(max_size=8), json_values,
                               max_size=6) if fields else st.just({})
    typed = st.fixed_dictionaries({}, optional={k: value_like(v) for k, v in fields.items()})
    with_stranger = st.tuples(typed, st.text(min_size=1, max_size=10), json_values).map(
        lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(json_values, own_keys, typed, with_stranger)


def structures_or_refuses(node: ManagementNode, api_name: str, body: Any) -> str:
    """``"structured"`` or ``"refused"``; anything else fails the test."""
    cls = node.api.message_class(api_name)
    try:
        msg = node.api.build(api_name, body)
    except ZStackError as exc:
        assert exc.code == "SYS.1007", f"{api_name} {body!r:.200}: {exc.error}"
        assert exc.error.details
        return "refused"
    assert isinstance(msg, cls)
    # What structured is what was sent: no coercion ("abc" is not a list of three letters,
    # "2" not the integer 2), so each field given reads back as given.
    back = unstructure(msg)
    for key, value in body.items():
        assert same_json(back.get(key), value), f"{api_name}.{key}: sent {value!r:.100}, structured {back.get(key)!r:.100}"
    return "structured"


def same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b or (isinstance(a, float) and type(b) is int and a == b)


@pytest.mark.parametrize("api_name", API_NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_structures_or_is_an_invalid_argument(api_name: str, data: st.DataObject) -> None:
    node = inspected_node()
    body = data.draw(bodies(api_name), label="body")
    structures_or_refuses(node, api_name, body)


def test_every_api_accepts_some_body_and_refuses_others() -> None:
    """Not a test that refuses everything: each API structures a minimal valid body (its required
    fields, of their kind) and refuses a non-object."""
    node = inspected_node()
    samples = {"string": "x", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    for api_name in API_NAMES:
        cls = node.api.message_class(api_name)
        schema = SchemaBuilder().object_schema(cls)
        body: dict[str, Any] = {}
        for key in schema.get("required", []):
            field = schema["properties"][key]
            kind = field.get("type")
            kind = next((k for k in kind if k != "null"), "string") if isinstance(kind, list) else kind
            body[key] = samples.get(kind or "string", "x") if "$ref" not in field else {}
        try:
            node.api.build(api_name, body)
        except ZStackError as exc:
            # A nested object we filled with {} may itself need fields: still SYS.1007.
            assert exc.code == "SYS.1007"
        assert structures_or_refuses(node, api_name, [body]) == "refused"
        assert structures_or_refuses(node, api_name, {**body, "noSuchField": 1}) == "refused"


def test_the_fuzz_covers_every_installed_plugin() -> None:
    node = inspected_node()
    owners = {node.api.owner(name) for name in API_NAMES}
    assert {"zstack_core", "kvm", "storage", "network"} <= owners, owners
    assert len(API_NAMES) > 100


def test_structuring_is_the_same_in_process_and_over_http(tmp_path: Path) -> None:
    """The message the mediator builds from a body is what the HTTP layer builds too (one
    converter): a refusal names the same field either way."""
    node = inspected_node()
    with pytest.raises(ZStackError) as info:
        node.api.build("CreateVmInstance", {"name": "vm", "cpuNum": "2", "memorySize": 1})
    assert info.value.code == "SYS.1007" and info.value.error.opaque.get("field") == "$.cpuNum"
