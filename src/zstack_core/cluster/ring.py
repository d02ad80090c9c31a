"""The consistent hash ring that gives every resource UUID one owner node (ZStack's
``ResourceDestinationMaker``).

Each management node is placed on the ring 500 times (``md5(f"{node_uuid}-{i}")``); a resource
belongs to the first node point at or after ``md5(resource_uuid)``, wrapping around. Because a
node's points depend only on its own UUID, every node computes the same owner from the same set of
members, and a join or a leave moves only the resources between the moved points: about ``1/n``
of them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

__all__ = ["VIRTUAL_NODES", "HashRing"]

VIRTUAL_NODES = 500


def _point(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:8], "big")


class HashRing:
    """An immutable ring of node UUIDs; build a new one when membership changes."""

    __slots__ = ("_nodes", "_points", "_owners", "vnodes")

    def __init__(self, nodes: Iterable[str] = (), vnodes: int = VIRTUAL_NODES) -> None:
        self.vnodes = vnodes
        self._nodes = frozenset(nodes)
        placed = sorted((_point(f"{node}-{i}"), node) for node in self._nodes for i in range(vnodes))
        self._points = [p for p, _ in placed]
        self._owners = [n for _, n in placed]

    @property
    def nodes(self) -> frozenset[str]:
        return self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_uuid: object) -> bool:
        return node_uuid in self._nodes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashRing) and other._nodes == self._nodes and other.vnodes == self.vnodes

    def __hash__(self) -> int:
        return hash((self._nodes, self.vnodes))

    def __repr__(self) -> str:
        return f"HashRing({sorted(self._nodes)!r})"

    def with_node(self, node_uuid: str) -> HashRing:
        return HashRing(self._nodes | {node_uuid}, self.vnodes)

    def without(self, node_uuid: str) -> HashRing:
        return HashRing(self._nodes - {node_uuid}, self.vnodes)

    def owner_of(self, resource_uuid: str) -> str | None:
        """The node owning ``resource_uuid``; None on an empty ring."""
        owners = self._owners
        if not owners:
            return None
        if len(self._nodes) == 1:
            return owners[0]
        i = bisect.bisect_left(self._points, _point(resource_uuid))
        return owners[i if i < len(owners) else 0]
