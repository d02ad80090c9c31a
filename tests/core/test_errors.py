"""ErrorCode: code, description, details, cause chain; its dict form; plugins' code spaces."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zstack_core import ErrorCode, ErrorCodeSpace, SysErrors, ZStackError, err, invalid_argument, operr
from zstack_core.serialize import structure, unstructure

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)

error_codes: st.SearchStrategy[ErrorCode] = st.recursive(
    st.builds(
        ErrorCode,
        code=st.from_regex(r"[A-Z]{1,6}\.[0-9]{4}", fullmatch=True),
        description=st.text(max_size=20),
        details=st.text(max_size=30),
        opaque=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
    lambda inner: st.builds(
        ErrorCode,
        code=st.from_regex(r"[A-Z]{1,6}\.[0-9]{4}", fullmatch=True),
        description=st.text(max_size=20),
        details=st.text(max_size=30),
        cause=inner,
    ),
    max_leaves=5,
)


@given(error_codes)
def test_dict_round_trip(error: ErrorCode) -> None:
    as_dict = error.to_dict()
    assert ErrorCode.from_dict(as_dict) == error
    assert ErrorCode.from_dict(json.loads(json.dumps(as_dict))) == error  # survives JSON too
    depth, d = 0, as_dict
    while d is not None:
        depth, d = depth + 1, d.get("cause")
    assert depth == len(error.chain())


@given(error_codes)
def test_round_trip_through_the_api_converter(error: ErrorCode) -> None:
    assert structure(unstructure(error), ErrorCode) == error  # type: ignore[arg-type]


def test_cause_chain() -> None:
    root = err("1001", "libvirt did not answer in 30s")
    middle = ErrorCode(code="HOST.1005", description="host is unreachable", details="host h1", cause=root)
    top = operr("creating VM vm1 failed", cause=middle)
    assert top.code == "SYS.1006"
    assert top.chain() == [top, middle, root]
    assert top.root_cause() is root
    assert top.caused("HOST.1005") and top.caused("SYS.1001") and not top.caused("SYS.1000")
    assert str(top) == ("SYS.1006 operation failed: creating VM vm1 failed (caused by HOST.1005 host is "
                        "unreachable: host h1 (caused by SYS.1001 operation timeout: libvirt did not answer in 30s))")
    assert top.to_dict()["cause"]["cause"]["code"] == "SYS.1001"


def test_error_code_is_immutable_and_compares_by_value() -> None:
    a = err("1004", "vm v1")
    assert a == err("1004", "vm v1") and a != err("1004", "vm v2")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.details = "x"  # type: ignore[misc]


def test_dict_form_leaves_out_empty_parts() -> None:
    assert err("1000").to_dict() == {"code": "SYS.1000", "description": "internal error", "details": ""}
    assert ErrorCode.from_dict({"code": "X.1"}) == ErrorCode(code="X.1", description="")


def test_zstack_error_carries_the_code() -> None:
    error = err("1015", "zone z1")
    exc = ZStackError(error)
    assert exc.error is error and exc.code == "SYS.1015" and str(exc) == str(error)


def test_invalid_argument_names_the_field() -> None:
    exc = invalid_argument("$.memorySize: expected int", "$.memorySize")
    assert exc.code == "SYS.1007" and exc.error.opaque == {"field": "$.memorySize"}
    assert invalid_argument("bad").error.opaque == {}


def test_error_code_space() -> None:
    host = ErrorCodeSpace(prefix="HOST", codes={"1005": "host is unreachable", "1006": "host is in maintenance"})
    cause = err("1001")
    e = host.error("1005", "host h1", cause=cause, host_uuid="h1")
    assert (e.code, e.description, e.details, e.cause) == ("HOST.1005", "host is unreachable", "host h1", cause)
    assert e.opaque == {"host_uuid": "h1"}
    exc = host.exc("1006", "h2")
    assert isinstance(exc, ZStackError) and exc.code == "HOST.1006"
    with pytest.raises(KeyError, match="HOST.9999"):
        host.error("9999")


@pytest.mark.parametrize("prefix", ["", "host", "Host", "HO ST", "HO-ST", "HOST."])
def test_error_code_space_prefix_is_upper_case(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        ErrorCodeSpace(prefix=prefix)


def test_error_code_space_accepts_underscores() -> None:
    assert ErrorCodeSpace(prefix="PRIMARY_STORAGE").prefix == "PRIMARY_STORAGE"


def test_kernel_codes() -> None:
    expected = {"1000": "internal error", "1001": "operation timeout", "1002": "no handler for the message",
                "1003": "no such service", "1005": "too busy, retry later", "1007": "invalid argument"}
    for number, description in expected.items():
        assert SysErrors.codes[number] == description
    assert SysErrors.prefix == "SYS"
    with pytest.raises(KeyError):
        err("0000")


def test_reply_error_survives_the_converter() -> None:
    from zstack_core import MessageReply

    reply = MessageReply(error=operr("x", cause=err("1001")))
    data: dict[str, Any] = unstructure(reply)
    assert data["error"]["cause"]["code"] == "SYS.1001"
    assert structure(data, MessageReply) == reply
