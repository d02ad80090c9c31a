"""The consistent hash ring: every node computes the same owner, load is spread evenly, and a
join or leave moves only the resources that must move."""

from __future__ import annotations

import uuid
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from zstack_core.cluster import VIRTUAL_NODES, HashRing

uuids = st.uuids().map(lambda u: u.hex)
node_sets = st.lists(uuids, min_size=1, max_size=6, unique=True)
RESOURCES = [uuid.UUID(int=i * 7919 + 12345).hex for i in range(3000)]


def test_empty_ring_owns_nothing() -> None:
    assert HashRing().owner_of(uuid.uuid4().hex) is None
    assert len(HashRing()) == 0


def test_one_node_owns_everything() -> None:
    node = uuid.uuid4().hex
    ring = HashRing([node])
    assert {ring.owner_of(r) for r in RESOURCES[:200]} == {node}


def test_500_virtual_nodes_per_node() -> None:
    ring = HashRing(["a" * 32, "b" * 32])
    assert ring.vnodes == VIRTUAL_NODES == 500
    assert len(ring._points) == 2 * 500  # noqa: SLF001 - the placement itself is the contract


def test_three_nodes_share_the_load_roughly_evenly() -> None:
    nodes = [uuid.UUID(int=n).hex for n in (1, 2, 3)]
    ring = HashRing(nodes)
    counts = Counter(ring.owner_of(r) for r in RESOURCES)
    assert set(counts) == set(nodes)
    for node in nodes:
        share = counts[node] / len(RESOURCES)
        assert 0.25 < share < 0.42, counts  # 1/3 give or take; 500 points per node keep it close


@given(node_sets, st.lists(uuids, min_size=1, max_size=20))
def test_every_node_computes_the_same_owner(nodes: list[str], resources: list[str]) -> None:
    a, b = HashRing(nodes), HashRing(list(reversed(nodes)))
    for r in resources:
        assert a.owner_of(r) == b.owner_of(r)
        assert a.owner_of(r) in nodes


@settings(max_examples=25, deadline=None)
@given(node_sets, uuids)
def test_a_join_moves_only_resources_to_the_new_node(nodes: list[str], newcomer: str) -> None:
    before = HashRing(nodes)
    after = before.with_node(newcomer)
    moved = 0
    for r in RESOURCES[:600]:
        old, new = before.owner_of(r), after.owner_of(r)
        if old != new:
            assert new == newcomer  # nothing moves between the old members
            moved += 1
    # Roughly 1/(n+1) moves; generous bounds against 600 samples.
    expected = 600 / (len(nodes) + 1)
    assert moved <= expected * 1.6 + 20


@settings(max_examples=25, deadline=None)
@given(st.lists(uuids, min_size=2, max_size=6, unique=True), st.data())
def test_a_leave_moves_only_the_leavers_resources(nodes: list[str], data: st.DataObject) -> None:
    leaver = data.draw(st.sampled_from(nodes))
    before = HashRing(nodes)
    after = before.without(leaver)
    for r in RESOURCES[:600]:
        old, new = before.owner_of(r), after.owner_of(r)
        if old != leaver:
            assert new == old
        else:
            assert new != leaver and new in nodes


def test_rings_compare_by_members() -> None:
    assert HashRing(["a", "b"]) == HashRing(["b", "a"])
    assert HashRing(["a"]) != HashRing(["a", "b"])
    assert "a" in HashRing(["a"]) and "b" not in HashRing(["a"])
