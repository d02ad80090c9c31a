"""The pure part of IPAM: range validation, the free-address space and the strategies.

``FreeIpSpace`` must agree with the obvious set arithmetic for any segments and exclusions;
hypothesis checks that, and that indexing (O(log n)) gives the same order as iteration.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstack_core.errors import ZStackError
from zstack_network.ipam import FirstAvailable, FreeIpSpace, Random, ip_to_int, parse_range, range_of_cidr


@st.composite
def segments_and_exclusions(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int]]:
    points = sorted(draw(st.sets(st.integers(0, 400), min_size=0, max_size=12)))
    if len(points) % 2:
        points = points[:-1]
    segments = [(points[i], points[i + 1]) for i in range(0, len(points), 2)]
    excluded = draw(st.lists(st.integers(-5, 410), max_size=60))
    return segments, excluded


@given(segments_and_exclusions())
@settings(max_examples=300, deadline=None)
def test_free_space_matches_set_arithmetic(case: tuple[list[tuple[int, int]], list[int]]) -> None:
    segments, excluded = case
    space = FreeIpSpace(segments, excluded)
    expected = sorted({v for s, e in segments for v in range(s, e + 1)} - set(excluded))
    assert list(space) == expected
    assert len(space) == len(expected)
    assert [space[i] for i in range(len(space))] == expected
    if expected:
        assert space[-1] == expected[-1]
    for probe in range(-5, 410, 7):
        assert (probe in space) == (probe in set(expected))
        assert list(space.from_value(probe)) == [v for v in expected if v >= probe]
    with pytest.raises(IndexError):
        space[len(expected)]


def test_free_space_of_a_slash_8_costs_nothing() -> None:
    start, end = ip_to_int("10.0.0.1"), ip_to_int("10.255.255.254")
    used = list(range(start, start + 5000))
    space = FreeIpSpace([(start, end)], used)
    assert len(space) == end - start + 1 - 5000
    assert space[0] == start + 5000
    assert space[len(space) - 1] == end


def test_overlapping_segments_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        FreeIpSpace([(1, 10), (10, 20)])


def test_strategies() -> None:
    space = FreeIpSpace([(10, 20)], [10, 11])
    assert FirstAvailable().choose(space, {10, 11}) == 12
    rnd = Random(random.Random(7))
    picks = {rnd.choose(space, set()) for _ in range(200)}
    assert picks <= set(range(12, 21)) and len(picks) > 5
    empty = FreeIpSpace([(1, 1)], [1])
    assert FirstAvailable().choose(empty, {1}) is None
    assert Random().choose(empty, {1}) is None


def test_parse_range_accepts_a_good_range() -> None:
    r = parse_range("192.168.1.10", "192.168.1.20", "255.255.255.0", "192.168.1.1")
    assert (r.size, str(r.network)) == (11, "192.168.1.0/24")


@pytest.mark.parametrize(("start", "end", "mask", "gw", "code", "words"), [
    ("192.168.1.20", "192.168.1.10", "255.255.255.0", "192.168.1.1", "L3.1005", "after"),
    ("192.168.1.10", "192.168.2.20", "255.255.255.0", "192.168.1.1", "L3.1005", "outside"),
    ("192.168.1.10", "192.168.1.20", "255.255.255.0", "192.168.2.1", "L3.1005", "outside"),
    ("192.168.1.10", "192.168.1.20", "255.255.255.0", "192.168.1.15", "L3.1005", "inside"),
    ("192.168.1.0", "192.168.1.20", "255.255.255.0", "192.168.1.254", "L3.1005", "network address"),
    ("192.168.1.10", "192.168.1.255", "255.255.255.0", "192.168.1.1", "L3.1005", "broadcast"),
    ("192.168.1.1", "192.168.1.1", "255.255.255.255", "192.168.1.1", "L3.1005", "/32"),
    ("192.168.1.300", "192.168.1.20", "255.255.255.0", "192.168.1.1", "SYS.1007", "startIp"),
    ("192.168.1.10", "nonsense", "255.255.255.0", "192.168.1.1", "SYS.1007", "endIp"),
    ("192.168.1.10", "192.168.1.20", "255.0.255.0", "192.168.1.1", "SYS.1007", "netmask"),
    ("192.168.1.10", "192.168.1.20", "255.255.255.0", "::1", "SYS.1007", "gateway"),
])
def test_parse_range_refuses(start: str, end: str, mask: str, gw: str, code: str, words: str) -> None:
    with pytest.raises(ZStackError) as info:
        parse_range(start, end, mask, gw)
    assert info.value.code == code
    assert words in str(info.value.error)


def test_range_of_cidr_leaves_out_network_broadcast_and_gateway() -> None:
    r, mask = range_of_cidr("10.1.0.0/24", None)
    assert (r.start, r.end, r.gateway, mask) == (ip_to_int("10.1.0.2"), ip_to_int("10.1.0.254"),
                                                 ip_to_int("10.1.0.1"), "255.255.255.0")
    r, _ = range_of_cidr("10.1.0.0/24", "10.1.0.254")
    assert (r.start, r.end) == (ip_to_int("10.1.0.1"), ip_to_int("10.1.0.253"))


@pytest.mark.parametrize(("cidr", "gw", "code"), [
    ("10.1.0.0/33", None, "SYS.1007"),
    ("10.1.0.5/24", None, "SYS.1007"),     # host bits set: malformed, not silently "fixed"
    ("not-a-cidr", None, "SYS.1007"),
    ("10.1.0.0/31", None, "L3.1005"),
    ("10.1.0.0/24", "10.1.0.7", "L3.1005"),  # gateway in the middle would split the range
    ("10.1.0.0/24", "10.2.0.1", "L3.1005"),
])
def test_range_of_cidr_refuses(cidr: str, gw: str | None, code: str) -> None:
    with pytest.raises(ZStackError) as info:
        range_of_cidr(cidr, gw)
    assert info.value.code == code
