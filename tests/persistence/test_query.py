"""The generic query, checked against a plain Python filter of the same rows.

Hypothesis generates a data set of ``Sample`` rows (int, text, bool, nullable int, nullable text,
datetime) and a query (conditions of every operator, sort, limit, offset, count); the node's
``QuerySample`` API must return exactly what :func:`expected` computes in Python.

Semantics the Python side mirrors (and the query engine guarantees on every backend):

- SQL NULL: a condition other than ``is null`` / ``is not null`` never selects a row whose field
  is NULL (``opt != 3`` does not return rows where ``opt`` is NULL; neither does ``not in`` nor
  ``not like``).
- ``like`` / ``not like``: ``%`` matches any run of characters, ``_`` one character, ``\\``
  makes the next character literal, and case is ignored (ASCII letters: SQLite's LIKE folds only
  ASCII case, so generated text is ASCII). Only text fields take ``like``.
- Sorting: NULL sorts before every value (first ascending, last descending); ties are broken by
  UUID. Text sorts by code point (SQLite's BINARY collation; the PostgreSQL test databases are
  created with ``LC_COLLATE 'C'``; a database with a linguistic collation orders text by it).
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zstack_core import SyncManagementNode, ZStackError

from .conftest import ALL_BACKENDS, database_url
from .plugins import LabPlugin, SampleVO

ALPHABET = "abAB%_ \\"
TEXT = st.text(alphabet=ALPHABET, max_size=4)
MOMENTS = [datetime.datetime(2024, 2, 29, 12, 0, 0), datetime.datetime(2024, 2, 29, 12, 0, 0, 1),
           datetime.datetime(2024, 2, 29, 12, 0, 0, 500000), datetime.datetime(2024, 3, 1, 0, 0, 0),
           datetime.datetime(1999, 12, 31, 23, 59, 59, 999999)]

FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "num": st.integers(-3, 3),
    "name": TEXT,
    "flag": st.booleans(),
    "opt": st.none() | st.integers(-3, 3),
    "note": st.none() | TEXT,
    "seenAt": st.sampled_from(MOMENTS),
}
ROW_FIELD = {"seenAt": "seen_at"}
TEXT_FIELDS = ("name", "note")
COMPARISONS = ("=", "!=", ">", ">=", "<", "<=", "in", "not in", "is null", "is not null")


def wire_value(value: Any) -> Any:
    """How a client sends a value: datetimes as ISO text, the rest as JSON scalars."""
    return value.isoformat() if isinstance(value, datetime.datetime) else value


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(FIELD_VALUES)))
    ops = COMPARISONS + (("like", "not like") if field in TEXT_FIELDS else ())
    op = draw(st.sampled_from(ops))
    cond: dict[str, Any] = {"name": field, "op": op}
    values = FIELD_VALUES[field].filter(lambda v: v is not None)
    if op in ("in", "not in"):
        cond["value"] = [wire_value(v) for v in draw(st.lists(values, min_size=1, max_size=3))]
    elif op in ("like", "not like"):
        cond["value"] = draw(st.text(alphabet=ALPHABET, max_size=5).filter(lambda p: not ends_escaping(p)))
    elif op not in ("is null", "is not null"):
        cond["value"] = wire_value(draw(values))
    return cond


rows_strategy = st.lists(st.fixed_dictionaries({
    "num": FIELD_VALUES["num"], "name": TEXT, "flag": st.booleans(), "opt": FIELD_VALUES["opt"],
    "note": FIELD_VALUES["note"], "seen_at": st.sampled_from(MOMENTS)}), max_size=12)

query_strategy = st.fixed_dictionaries({
    "conditions": st.lists(conditions(), max_size=3),
    "sortBy": st.none() | st.sampled_from(sorted(FIELD_VALUES)),
    "sortDirection": st.sampled_from(["asc", "desc"]),
    "limit": st.none() | st.integers(0, 6),
    "start": st.integers(0, 4),
})


def ends_escaping(pattern: str) -> bool:
    """True when the pattern ends with an escape character that escapes nothing."""
    return (len(pattern) - len(pattern.rstrip("\\"))) % 2 == 1


def like_regex(pattern: str) -> re.Pattern[str]:
    parts, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            parts.append(re.escape(next(chars)))
        else:
            parts.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def parse(field: str, value: Any) -> Any:
    return datetime.datetime.fromisoformat(value) if field == "seenAt" else value


def matches(row: dict[str, Any], cond: dict[str, Any]) -> bool:
    field, op = cond["name"], cond["op"]
    v = row[ROW_FIELD.get(field, field)]
    if op == "is null":
        return v is None
    if op == "is not null":
        return v is not None
    if v is None:
        return False  # SQL: a comparison with NULL is unknown, and unknown is not selected
    if op in ("in", "not in"):
        inside = v in [parse(field, x) for x in cond["value"]]
        return inside if op == "in" else not inside
    if op in ("like", "not like"):
        hit = like_regex(cond["value"]).fullmatch(v) is not None
        return hit if op == "like" else not hit
    x = parse(field, cond["value"])
    return {"=": v == x, "!=": v != x, ">": v > x, ">=": v >= x, "<": v < x, "<=": v <= x}[op]


def expected(rows: list[dict[str, Any]], query: dict[str, Any]) -> tuple[list[str], int]:
    """(UUIDs of the page, number of matches) computed in Python."""
    hits = [r for r in rows if all(matches(r, c) for c in query["conditions"])]
    hits.sort(key=lambda r: r["uuid"])
    if query["sortBy"]:
        field = ROW_FIELD.get(query["sortBy"], query["sortBy"])
        # NULL first; sort is stable even with reverse=True, so ties keep UUID order.
        hits.sort(key=lambda r: (r[field] is not None, r[field] if r[field] is not None else 0),
                  reverse=query["sortDirection"] == "desc")
    page = hits[query["start"]:]
    if query["limit"] is not None:
        page = page[:query["limit"]]
    return [r["uuid"] for r in page], len(hits)


@pytest.fixture(scope="module", params=ALL_BACKENDS)
def lab_node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncManagementNode]:
    """One node per backend for the whole module: hypothesis runs many examples against it."""
    directory = tmp_path_factory.mktemp(f"query-{request.param}")
    for url in database_url(request.param, request, directory):
        with SyncManagementNode(plugins=[LabPlugin()], load_entry_points=False, data_dir=directory / "data",
                                settings={"database.url": url}) as node:
            yield node


def load_rows(node: SyncManagementNode, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [{**r, "uuid": hashlib.md5(str(i).encode()).hexdigest()} for i, r in enumerate(rows)]

    def write() -> None:
        SampleVO.delete().execute()
        if rows:
            SampleVO.insert_many(rows).execute()

    assert node.node is not None
    node.run(node.node.db.atomic(write))
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, query=query_strategy)
def test_query_matches_a_python_filter(lab_node: SyncManagementNode, rows: list[dict[str, Any]],
                                       query: dict[str, Any]) -> None:
    rows = load_rows(lab_node, rows)
    want_page, want_total = expected(rows, query)
    body = {k: v for k, v in query.items() if v is not None or k == "limit"}
    reply = lab_node.api_call("QuerySample", body, replyWithCount=True)
    assert [i.uuid for i in reply.inventories] == want_page
    assert reply.total == want_total
    # Inventories carry the stored values unchanged (datetimes to the microsecond, booleans).
    by_uuid = {r["uuid"]: r for r in rows}
    for inv in reply.inventories:
        assert attrs.asdict(inv) == by_uuid[inv.uuid]
    counted = lab_node.api_call("QuerySample", {"conditions": query["conditions"]}, count=True)
    assert (counted.total, counted.inventories) == (want_total, [])


ROWS = [
    {"num": 1, "name": "alpha", "flag": True, "opt": None, "note": None, "seen_at": MOMENTS[0]},
    {"num": 2, "name": "Beta", "flag": False, "opt": 5, "note": "x", "seen_at": MOMENTS[1]},
    {"num": 3, "name": "gamma", "flag": True, "opt": 7, "note": None, "seen_at": MOMENTS[2]},
]


def names(node: SyncManagementNode, *conds: dict[str, Any], **kw: Any) -> list[str]:
    reply = node.api_call("QuerySample", {"conditions": list(conds), "sortBy": "num", **kw})
    return [i.name for i in reply.inventories]


def test_zstack_operator_spellings_and_comma_lists(lab_node: SyncManagementNode) -> None:
    load_rows(lab_node, ROWS)
    assert names(lab_node, {"name": "num", "op": "?=", "value": "1,3"}) == ["alpha", "gamma"]
    assert names(lab_node, {"name": "num", "op": "!?=", "value": "1,3"}) == ["Beta"]
    assert names(lab_node, {"name": "name", "op": "~=", "value": "%A"}) == ["alpha", "Beta", "gamma"]
    assert names(lab_node, {"name": "name", "op": "!~=", "value": "%mm%"}) == ["alpha", "Beta"]
    assert names(lab_node, {"name": "name", "op": "like", "value": "_eta"}) == ["Beta"]
    assert names(lab_node, {"name": "name", "op": "like", "value": "\\_eta"}) == []  # an escaped _ is literal
    assert names(lab_node, {"name": "seen_at", "op": ">", "value": MOMENTS[0].isoformat()}) == ["Beta", "gamma"]
    assert names(lab_node, {"name": "flag", "op": "=", "value": "true"}) == ["alpha", "gamma"]
    # An aware datetime is compared in UTC, as the database stores times.
    later = (MOMENTS[0] + datetime.timedelta(hours=2)).replace(tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert names(lab_node, {"name": "seenAt", "op": "<=", "value": later.isoformat()}) == ["alpha"]


def test_offset_without_limit_and_sort_on_nulls(lab_node: SyncManagementNode) -> None:
    load_rows(lab_node, ROWS)
    assert names(lab_node, limit=None, start=1) == ["Beta", "gamma"]
    reply = lab_node.api_call("QuerySample", {"sortBy": "opt", "sortDirection": "desc"})
    assert [i.name for i in reply.inventories] == ["gamma", "Beta", "alpha"]  # NULL last when descending
    reply = lab_node.api_call("QuerySample", {"sortBy": "opt"})
    assert [i.name for i in reply.inventories] == ["alpha", "Beta", "gamma"]  # and first when ascending


@pytest.mark.parametrize(("body", "code", "message", "field"), [
    ({"conditions": [{"name": "nmu", "op": "=", "value": 1}]}, "SYS.1007",
     "Sample has no queryable field 'nmu' (did you mean 'num'?); valid fields: createdAt, flag, name, note, num, "
     "opt, seenAt, updatedAt, uuid, __systemTag__", "$.conditions[0].name"),
    ({"sortBy": "colour"}, "SYS.1007", "valid fields: createdAt, flag", "$.sortBy"),
    ({"conditions": [{"name": "num", "op": "=", "value": "three"}]}, "SYS.1007",
     "'three' is not a valid integer for num", "$.conditions[0].value"),
    ({"conditions": [{"name": "num", "op": "in", "value": [1, "two"]}]}, "SYS.1007",
     "'two' is not a valid integer for num", "$.conditions[0].value"),
    ({"conditions": [{"name": "flag", "op": "=", "value": "maybe"}]}, "SYS.1007",
     "'maybe' is not a valid boolean for flag", "$.conditions[0].value"),
    ({"conditions": [{"name": "seenAt", "op": ">", "value": "yesterday"}]}, "SYS.1007",
     "'yesterday' is not a valid datetime for seenAt", "$.conditions[0].value"),
    ({"conditions": [{"name": "num", "op": "like", "value": "1%"}]}, "SYS.1007",
     "like applies to text fields only, not to num (integer)", "$.conditions[0].op"),
    ({"conditions": [{"name": "name", "op": "like", "value": 5}]}, "SYS.1007",
     "like needs a text pattern", "$.conditions[0].value"),
    ({"conditions": [{"name": "name", "op": "not like", "value": "50\\"}]}, "SYS.1007",
     "a like pattern cannot end with the escape character '\\' (write '\\\\' for a backslash)",
     "$.conditions[0].value"),
    ({"conditions": [{"name": "num", "op": "=~", "value": 1}]}, "SYS.1007",
     "unknown operator '=~'; valid: =, !=, >, >=, <, <=, in, not in, like, not like, is null, is not null",
     "$.conditions[0].op"),
    ({"conditions": [{"name": "num", "op": ">"}]}, "SYS.1007", "operator '>' needs a value", "$.conditions[0].value"),
    ({"limit": -1}, "SYS.1007", "limit cannot be negative", "$.limit"),
    ({"sortBy": "num", "sortDirection": "up"}, "SYS.1007", "sortDirection must be asc or desc", "$.sortDirection"),
    ({"limit": "ten"}, "SYS.1007", "", "$.limit"),  # refused by the message's own types
])
def test_bad_queries_are_refused_with_an_error_naming_the_problem(lab_node: SyncManagementNode, body: dict[str, Any],
                                                                    code: str, message: str, field: str) -> None:
    with pytest.raises(ZStackError) as refused:
        lab_node.api_call("QuerySample", body)
    error = refused.value.error
    assert error.code == code and message in error.details
    assert error.opaque.get("field") == field


def test_every_queryable_resource_gets_an_api_and_a_route(lab_node: SyncManagementNode) -> None:
    assert lab_node.node is not None
    api = lab_node.node.api
    for name, route in [("QuerySample", ("GET", "/v1/samples")), ("QueryThing", ("GET", "/v1/things")),
                        ("QueryGlobalConfig", ("GET", "/v1/global-configs")),
                        ("QuerySystemTag", ("GET", "/v1/system-tags"))]:
        assert api.registrations[name].route == route
        assert api.owner(name) in ("LabPlugin", "zstack_core")
