"""IP address management: which addresses are free, how one is picked, and how it is taken.

Two layers:

* pure logic, no database: :func:`parse_range` validates a range against its subnet;
  :class:`FreeIpSpace` is the free addresses of some ranges minus used and reserved ones, as an
  indexable sequence that costs O(log n) per element, so a strategy can pick the first or a
  random free address of a /8 without listing sixteen million integers; the strategies
  (:class:`FirstAvailable`, :class:`Random`) are registered through
  ``zstack_ip_allocation_strategies`` like anyone else's.
* :func:`allocate_ip_sync`, which runs in a database thread inside a write transaction: it reads
  the ranges and reservations (one statement), chooses, and inserts the ``UsedIpVO`` row. The
  row's unique key ``(l3_network_uuid, ip_int)`` is the guarantee: when another process or node
  took the address first, the insert inserts nothing and the allocation tries again with a
  fresh view. ``FirstAvailable`` walks the used addresses in index order from a per-L3 hint
  (:func:`lowest_free_sync`: the cost is the gap skipped, not the addresses in use); ``Random``
  draws a few addresses and asks which are used; any other strategy gets the whole
  :class:`FreeIpSpace` (:func:`free_space_sync`: O(used addresses)). The hint is only where a
  search starts, never trusted for who owns an address.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import logging
import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import attrs
import peewee

from zstack_core.db import new_uuid, utcnow
from zstack_core.errors import invalid_argument
from zstack_core.header.backends import IpAllocationStrategy

from .errors import L3Errors
from .models import real_database
from zstack_core.prepared import ClashInsert, Markers, Prepared

__all__ = [
    "FirstAvailable",
    "FreeIpSpace",
    "ParsedRange",
    "Random",
    "allocate_ip_sync",
    "int_to_ip",
    "ip_to_int",
    "parse_cidr",
    "parse_ip",
    "parse_range",
]

log = logging.getLogger("zstack.network.ipam")



def parse_ip(text: str, field: str) -> ipaddress.IPv4Address:
    """``text`` as an IPv4 address, or ``SYS.1007`` naming ``field``."""
    try:
        return ipaddress.IPv4Address(text.strip() if isinstance(text, str) else text)
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise invalid_argument(f"{field}: {text!r} is not an IPv4 address", field) from None


def parse_netmask(text: str, field: str) -> int:
    """The prefix length of netmask ``text`` (``255.255.255.0`` -> 24), or ``SYS.1007``."""
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{text.strip()}").prefixlen
    except (ipaddress.NetmaskValueError, ValueError, TypeError, AttributeError):
        raise invalid_argument(f"{field}: {text!r} is not an IPv4 netmask", field) from None


def parse_cidr(text: str, field: str) -> ipaddress.IPv4Network:
    """``text`` as a network (``10.0.0.0/24``; host bits must be zero), or ``SYS.1007``."""
    try:
        return ipaddress.IPv4Network(text.strip())
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError, AttributeError) as exc:
        raise invalid_argument(f"{field}: {text!r} is not an IPv4 CIDR: {exc}", field) from None


def ip_to_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def int_to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


@attrs.frozen(kw_only=True)
class ParsedRange:
    """A validated range: ``start``..``end`` inside ``network``, ``gateway`` outside the range."""

    start: int
    end: int
    gateway: int
    network: ipaddress.IPv4Network

    @property
    def size(self) -> int:
        return self.end - self.start + 1

    def overlaps(self, start: int, end: int) -> bool:
        return self.start <= end and start <= self.end


def parse_range(start_ip: str, end_ip: str, netmask: str, gateway: str) -> ParsedRange:
    """Validate a range: addresses well-formed (``SYS.1007``), then ``L3.1005`` when start is
    after end, the range or gateway leaves the subnet, the range includes the subnet's network or
    broadcast address, or the gateway lies inside the range."""
    start = parse_ip(start_ip, "startIp")
    end = parse_ip(end_ip, "endIp")
    prefix = parse_netmask(netmask, "netmask")
    gw = parse_ip(gateway, "gateway")
    network = ipaddress.IPv4Network(f"{start}/{prefix}", strict=False)
    if prefix > 30:
        raise L3Errors.exc("1005", f"netmask {netmask} (/{prefix}) leaves no room for a gateway and hosts; use /30 or wider")
    if int(start) > int(end):
        raise L3Errors.exc("1005", f"startIp {start} is after endIp {end}")
    if end not in network:
        raise L3Errors.exc("1005", f"endIp {end} is outside {network} (startIp {start}, netmask {netmask})")
    if gw not in network:
        raise L3Errors.exc("1005", f"gateway {gw} is outside {network}")
    for special, what in ((network.network_address, "network"), (network.broadcast_address, "broadcast")):
        if int(start) <= int(special) <= int(end):
            raise L3Errors.exc("1005", f"the range {start}-{end} includes the {what} address {special} of {network}")
    if int(start) <= int(gw) <= int(end):
        raise L3Errors.exc("1005", f"gateway {gw} is inside the range {start}-{end}; a gateway is never handed out, "
                                   "so keep it outside the range")
    return ParsedRange(start=int(start), end=int(end), gateway=int(gw), network=network)


def range_of_cidr(network_cidr: str, gateway: str | None) -> tuple[ParsedRange, str]:
    """The range of every host address of ``network_cidr`` except the gateway (default: the
    first host), and the netmask. The gateway must be the first or last host address so the
    rest is one contiguous range."""
    network = parse_cidr(network_cidr, "networkCidr")
    if network.prefixlen > 30:
        raise L3Errors.exc("1005", f"{network} has no room for a gateway and hosts; use /30 or wider")
    first, last = int(network.network_address) + 1, int(network.broadcast_address) - 1
    gw = int(parse_ip(gateway, "gateway")) if gateway else first
    if gw == first:
        start, end = first + 1, last
    elif gw == last:
        start, end = first, last - 1
    elif int(network.network_address) <= gw <= int(network.broadcast_address):
        raise L3Errors.exc("1005", f"gateway {int_to_ip(gw)} must be the first ({int_to_ip(first)}) or last "
                                   f"({int_to_ip(last)}) host address of {network}")
    else:
        raise L3Errors.exc("1005", f"gateway {int_to_ip(gw)} is outside {network}")
    return ParsedRange(start=start, end=end, gateway=gw, network=network), str(network.netmask)


class FreeIpSpace(Sequence[int]):
    """The free addresses (as integers, ascending) of ``segments`` minus ``excluded``.

    ``segments`` are inclusive ``(start, end)`` pairs that do not overlap; ``excluded`` may hold
    anything (addresses outside every segment are ignored). Length and indexing cost
    O(log n), so strategies can choose among millions of addresses cheaply.
    """

    def __init__(self, segments: Iterable[tuple[int, int]], excluded: Iterable[int] = ()) -> None:
        self._segments = sorted(segments)
        for (s1, e1), (s2, _) in zip(self._segments, self._segments[1:]):
            if s2 <= e1:
                raise ValueError(f"segments overlap: {s1}-{e1} and {s2}")
        self._excluded: list[list[int]] = []
        self._counts: list[int] = []  # free addresses in each segment
        all_excluded = sorted(set(excluded))
        for start, end in self._segments:
            lo, hi = bisect.bisect_left(all_excluded, start), bisect.bisect_right(all_excluded, end)
            inside = all_excluded[lo:hi]
            self._excluded.append(inside)
            self._counts.append(end - start + 1 - len(inside))
        self._total = sum(self._counts)

    def __len__(self) -> int:
        return self._total

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._total))]
        if index < 0:
            index += self._total
        if not 0 <= index < self._total:
            raise IndexError(index)
        for (start, _), excluded, count in zip(self._segments, self._excluded, self._counts):
            if index < count:
                return _nth_free(start, excluded, index)
            index -= count
        raise IndexError(index)  # pragma: no cover - counts add up to the total

    def __iter__(self) -> Iterator[int]:
        for (start, end), excluded in zip(self._segments, self._excluded):
            skip = set(excluded)
            for value in range(start, end + 1):
                if value not in skip:
                    yield value

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        for (start, end), excluded in zip(self._segments, self._excluded):
            if start <= value <= end:
                i = bisect.bisect_left(excluded, value)
                return not (i < len(excluded) and excluded[i] == value)
        return False

    def from_value(self, value: int) -> Iterator[int]:
        """Free addresses >= ``value``, ascending."""
        for (start, end), excluded in zip(self._segments, self._excluded):
            if end < value:
                continue
            skip = set(excluded)
            for candidate in range(max(start, value), end + 1):
                if candidate not in skip:
                    yield candidate


def _nth_free(start: int, excluded: list[int], n: int) -> int:
    """The n-th (0-based) address >= ``start`` not in sorted ``excluded`` (all >= start)."""
    # Before excluded[j], start + n + j would be the answer if exactly j exclusions come first.
    lo, hi = 0, len(excluded)
    while lo < hi:  # find how many exclusions lie at or below the answer
        mid = (lo + hi) // 2
        if excluded[mid] <= start + n + mid:
            lo = mid + 1
        else:
            hi = mid
    return start + n + lo


class FirstAvailable(IpAllocationStrategy):
    """The lowest free address: predictable, and what ZStack does by default."""

    name = "FirstAvailable"

    def choose(self, free: Sequence[int], used: set[int]) -> int | None:
        return free[0] if len(free) else None


class Random(IpAllocationStrategy):
    """A uniformly random free address: fewer clashes when many allocators race, and freed
    addresses are not handed straight to the next VM."""

    name = "Random"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.SystemRandom()

    def choose(self, free: Sequence[int], used: set[int]) -> int | None:
        return free[self._rng.randrange(len(free))] if len(free) else None


@attrs.frozen(kw_only=True)
class Allocation:
    """What :func:`allocate_ip_sync` took."""

    used_ip_uuid: str
    ip: str
    ip_int: int
    ip_range_uuid: str
    netmask: str
    gateway: str
    attempts: int


def free_space_sync(l3_uuid: str, ip_range_uuid: str | None = None,
                    also_excluded: Iterable[int] = ()) -> tuple[FreeIpSpace, list[Any], set[int]]:
    """The free addresses of an L3 network (or of one of its ranges), its ranges, and its used
    addresses (database thread). Free means: in a range, not used, not reserved, not a gateway."""
    from .models import IpRangeVO, ReservedIpRangeVO, UsedIpVO

    ranges = list(IpRangeVO.select().where(IpRangeVO.l3_network_uuid == l3_uuid).order_by(IpRangeVO.start_int))
    if ip_range_uuid is not None:
        ranges = [r for r in ranges if r.uuid == ip_range_uuid]
    # The driver's rows as they come: peewee's per-row conversion of every used address was most
    # of a VM create's database time with thousands of VMs on one L3 (scale benchmark).
    query = UsedIpVO.select(UsedIpVO.ip_int).where(UsedIpVO.l3_network_uuid == l3_uuid)
    used = {v for (v,) in UsedIpVO._meta.database.execute(query)}
    excluded = [*used, *also_excluded, *(ip_to_int(r.gateway) for r in ranges)]
    reserved = ReservedIpRangeVO.select(ReservedIpRangeVO.start_int, ReservedIpRangeVO.end_int).where(
        ReservedIpRangeVO.l3_network_uuid == l3_uuid).tuples()
    for start, end in reserved:
        for r in ranges:  # clipped to the ranges: a huge reservation costs nothing
            excluded.extend(range(max(start, r.start_int), min(end, r.end_int) + 1))
    return FreeIpSpace([(r.start_int, r.end_int) for r in ranges], excluded), ranges, used


# -- the database side --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RangeRow:
    uuid: str
    start_int: int
    end_int: int
    netmask: str
    gateway: str


@attrs.frozen(kw_only=True)
class L3Addresses:
    """What bounds the addresses of an L3 network: its ranges (ascending), its reserved spans
    (merged, ascending) and the gateways of its ranges. Small: read whole, every allocation."""

    ranges: tuple[RangeRow, ...]
    reserved: tuple[tuple[int, int], ...]
    gateways: frozenset[int]

    def range_of(self, value: int) -> RangeRow | None:
        for r in self.ranges:
            if r.start_int <= value <= r.end_int:
                return r
        return None

    def reserved_span(self, value: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.reserved, (value, float("inf"))) - 1
        if i >= 0 and self.reserved[i][0] <= value <= self.reserved[i][1]:
            return self.reserved[i]
        return None

    def excluded(self, value: int) -> bool:
        """A gateway, reserved, or in no range: never handed out."""
        return value in self.gateways or self.reserved_span(value) is not None or self.range_of(value) is None

    def next_candidate(self, value: int) -> int | None:
        """The lowest address >= ``value`` in a range, not a gateway, not reserved (used or not)."""
        for r in self.ranges:
            if r.end_int < value:
                continue
            value = max(value, r.start_int)
            while value <= r.end_int:
                span = self.reserved_span(value)
                if span is not None:
                    value = span[1] + 1
                elif value in self.gateways:
                    value += 1
                else:
                    return value
        return None

    @property
    def size(self) -> int:
        return sum(r.end_int - r.start_int + 1 for r in self.ranges)

    def nth(self, n: int) -> int:
        """The n-th address (0-based) of the ranges taken together, ascending."""
        for r in self.ranges:
            if n <= r.end_int - r.start_int:
                return r.start_int + n
            n -= r.end_int - r.start_int + 1
        raise IndexError(n)


def _addresses_query(p: Markers) -> peewee.Query:
    from .models import IpRangeVO, ReservedIpRangeVO

    ranges = IpRangeVO.select(peewee.SQL("0").alias("kind"), IpRangeVO.uuid, IpRangeVO.start_int, IpRangeVO.end_int,
                              IpRangeVO.netmask, IpRangeVO.gateway).where(IpRangeVO.l3_network_uuid == p.l3)
    reserved = ReservedIpRangeVO.select(peewee.SQL("1"), ReservedIpRangeVO.uuid, ReservedIpRangeVO.start_int,
                                        ReservedIpRangeVO.end_int, ReservedIpRangeVO.start_ip,
                                        ReservedIpRangeVO.end_ip).where(ReservedIpRangeVO.l3_network_uuid == p.l3)
    return ranges.union_all(reserved)


def _used_from_query(p: Markers) -> peewee.Query:
    from .models import UsedIpVO

    return (UsedIpVO.select(UsedIpVO.ip_int)
            .where((UsedIpVO.l3_network_uuid == p.l3) & (UsedIpVO.ip_int >= p.from_int))
            .order_by(UsedIpVO.ip_int).limit(p.limit_int))


def _used_one_query(p: Markers) -> peewee.Query:
    from .models import UsedIpVO

    return UsedIpVO.select(UsedIpVO.ip_int).where((UsedIpVO.l3_network_uuid == p.l3) & (UsedIpVO.ip_int == p.ip_int))


def _insert_used(p: Markers) -> peewee.Query:
    from .models import UsedIpVO

    return UsedIpVO.insert(uuid=p.uuid, created_at=p.now, updated_at=p.now, l3_network_uuid=p.l3, ip_range_uuid=p.range,
                           ip=p.ip, ip_int=p.ip_int, vm_nic_uuid=p.nic)


_INSERT_USED = ClashInsert(_insert_used)
_ADDRESSES = Prepared(_addresses_query)
_USED_FROM = Prepared(_used_from_query)
_USED_ONE = Prepared(_used_one_query)
WALK_BATCH = 256


def load_addresses_sync(l3_uuid: str) -> L3Addresses:
    """The ranges, reserved spans and gateways of ``l3_uuid`` in one statement (database thread)."""
    ranges: list[RangeRow] = []
    spans: list[tuple[int, int]] = []
    for kind, uuid, start, end, netmask, gateway in _ADDRESSES.run(l3=l3_uuid):
        if kind == 0:
            ranges.append(RangeRow(uuid=uuid, start_int=start, end_int=end, netmask=netmask, gateway=gateway))
        else:
            spans.append((start, end))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):  # reservations may overlap: merge them for bisecting
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    ranges.sort(key=lambda r: r.start_int)
    return L3Addresses(ranges=tuple(ranges), reserved=tuple(merged), gateways=frozenset(ip_to_int(r.gateway) for r in ranges))


class _Hints:
    """Per L3 network, an address below which this process knows nothing is free (so the
    search for the lowest free address starts there instead of at the bottom of the range).

    Only ever a starting point: the unique key decides who gets an address, and an L3 network
    that looks full from the hint is searched again from the bottom, so a hint that is too high
    (addresses freed by another process) costs the *lowest* choice, never an address or a
    refusal. Lowered when this process releases an address; forgotten when the ranges or
    reservations change. Guarded by a lock: PostgreSQL runs several database threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hints: dict[tuple[int, str], tuple[Any, int]] = {}
        self._generation: dict[tuple[int, str], int] = {}

    @staticmethod
    def _key(l3_uuid: str) -> tuple[int, str]:
        return id(real_database()), l3_uuid

    def get(self, l3_uuid: str, addrs: L3Addresses) -> tuple[int | None, int]:
        key = self._key(l3_uuid)
        with self._lock:
            generation = self._generation.get(key, 0)
            found = self._hints.get(key)
            if found is None or found[0] != (addrs.ranges, addrs.reserved):
                return None, generation
            return found[1], generation

    def advance(self, l3_uuid: str, addrs: L3Addresses, value: int, generation: int) -> None:
        """Everything below ``value`` was seen taken, by a search that started under ``generation``."""
        key = self._key(l3_uuid)
        with self._lock:
            if self._generation.get(key, 0) == generation:  # no release since the search began
                self._hints[key] = ((addrs.ranges, addrs.reserved), value)

    def lower(self, l3_uuid: str, value: int | None = None) -> None:
        """``value`` was freed (None: forget the hint of ``l3_uuid``)."""
        key = self._key(l3_uuid)
        with self._lock:
            self._generation[key] = self._generation.get(key, 0) + 1
            found = self._hints.get(key)
            if found is not None and (value is None or value < found[1]):
                if value is None:
                    del self._hints[key]
                else:
                    self._hints[key] = (found[0], value)


HINTS = _Hints()


def lowest_free_sync(l3_uuid: str, addrs: L3Addresses, count: int = 1, also_excluded: Iterable[int] = (),
                     start: int | None = None) -> list[int]:
    """Up to ``count`` lowest free addresses of ``l3_uuid`` (ascending; >= ``start`` if given),
    database thread.

    Walks the used addresses upwards in index order from where this process last found the
    lowest free one, so the cost is the gap it has to skip, not the number of addresses in
    use. Falls back to a walk from the bottom when the hinted walk finds too few.
    """
    skip = set(also_excluded)
    hint, generation = (None, 0) if start is not None else HINTS.get(l3_uuid, addrs)
    found = _walk(l3_uuid, addrs, count, skip, hint if hint is not None else start)
    if len(found) < count and hint is not None:
        found = _walk(l3_uuid, addrs, count, skip, None)  # freed below the hint by someone else
    if found and start is None:
        HINTS.advance(l3_uuid, addrs, found[0], generation)
    return found


def _walk(l3_uuid: str, addrs: L3Addresses, count: int, skip: set[int], start: int | None) -> list[int]:
    out: list[int] = []
    if not addrs.ranges:
        return out
    cursor = addrs.next_candidate(addrs.ranges[0].start_int if start is None else start)
    while cursor is not None and len(out) < count:
        used = [v for (v,) in _USED_FROM.run(l3=l3_uuid, from_int=cursor, limit_int=WALK_BATCH)]
        complete = len(used) < WALK_BATCH  # every used address >= cursor is in ``used``
        i = 0
        while cursor is not None and len(out) < count:
            while i < len(used) and used[i] < cursor:
                i += 1
            if i == len(used) and not complete:
                break  # past this batch: fetch the next one from ``cursor``
            if i < len(used) and used[i] == cursor:
                i += 1
            elif cursor not in skip:
                out.append(cursor)
            cursor = addrs.next_candidate(cursor + 1)
    return out


def is_used_sync(l3_uuid: str, value: int) -> bool:
    return bool(list(_USED_ONE.run(l3=l3_uuid, ip_int=value)))


def free_count_at_least_sync(l3_uuid: str, addrs: L3Addresses, wanted: int) -> int:
    """How many free addresses ``l3_uuid`` has, counted only up to ``wanted`` (database thread)."""
    return len(lowest_free_sync(l3_uuid, addrs, wanted))


def _random_free_sync(l3_uuid: str, addrs: L3Addresses, rng: random.Random, skip: set[int]) -> int | None:
    """A uniformly random free address by rejection sampling: draw addresses of the ranges at
    random, one statement tells which are used, the first draw that is free wins (uniform over
    the free addresses). None when every draw was taken (a nearly full network): the caller
    then lists the free space instead."""
    from .models import UsedIpVO

    size = addrs.size
    if size == 0:
        return None
    draws = [addrs.nth(rng.randrange(size)) for _ in range(RANDOM_DRAWS)]
    draws = [d for d in draws if d not in skip and not addrs.excluded(d)]
    if not draws:
        return None
    used = {v for (v,) in UsedIpVO.select(UsedIpVO.ip_int).where(
        (UsedIpVO.l3_network_uuid == l3_uuid) & UsedIpVO.ip_int.in_(sorted(set(draws)))).tuples()}
    return next((d for d in draws if d not in used), None)


RANDOM_DRAWS = 16


def allocate_ip_sync(l3_uuid: str, strategy: IpAllocationStrategy, requested: str | None = None,
                     vm_nic_uuid: str | None = None) -> Allocation:
    """Take an address of ``l3_uuid``: ``requested`` if given, else one ``strategy`` chooses.

    Runs in a database thread, inside the caller's write transaction. Raises ``L3.1002`` when
    nothing is free, ``L3.1003`` when ``requested`` is in no range, ``L3.1004`` when it is used,
    reserved or the gateway.

    ``FirstAvailable`` and ``Random`` choose with a few index lookups (:func:`lowest_free_sync`,
    random draws); any other strategy is handed the whole free space (:func:`free_space_sync`).
    """
    # Each clash means another allocator committed that address, so it never comes back and the
    # free space shrinks every round: the loop ends, at worst with L3.1002 when all is taken.
    clashed: set[int] = set()
    for attempt in itertools.count(1):
        # A fresh view each time: after a clash it includes the address the other side took.
        addrs = load_addresses_sync(l3_uuid)
        if not addrs.ranges:
            raise L3Errors.exc("1002", f"L3 network {l3_uuid} has no IP range")
        if requested is not None:
            value = ip_to_int(requested)
            if value in addrs.gateways:
                raise L3Errors.exc("1004", f"{requested} is the gateway of L3 network {l3_uuid}")
            if addrs.range_of(value) is None:
                raise L3Errors.exc("1003", f"{requested} is in no IP range of L3 network {l3_uuid}")
            if addrs.reserved_span(value) is not None:
                raise L3Errors.exc("1004", f"{requested} is reserved in L3 network {l3_uuid}")
            # Whether it is used, the unique key says at the insert below.
        elif isinstance(strategy, FirstAvailable):
            lowest = lowest_free_sync(l3_uuid, addrs, 1, clashed)
            if not lowest:
                raise L3Errors.exc("1002", f"L3 network {l3_uuid} has no free IP address")
            value = lowest[0]
        else:
            choice = _random_free_sync(l3_uuid, addrs, strategy._rng, clashed) if isinstance(strategy, Random) else None
            if choice is None:
                space, _, used = free_space_sync(l3_uuid, also_excluded=clashed)
                choice = strategy.choose(space, used)
                if choice is None:
                    raise L3Errors.exc("1002", f"L3 network {l3_uuid} has no free IP address")
                if choice not in space:
                    raise L3Errors.exc("1000", f"strategy {strategy.name} chose {int_to_ip(choice)}, which is not free")
            value = choice
        rng = addrs.range_of(value)
        assert rng is not None
        row_uuid = new_uuid()
        # The unique key (l3_network_uuid, ip_int) decides: a clash inserts nothing.
        if not _INSERT_USED.run(uuid=row_uuid, now=utcnow(), l3=l3_uuid, range=rng.uuid, ip=int_to_ip(value),
                                ip_int=value, nic=vm_nic_uuid):
            if requested is not None:
                raise L3Errors.exc("1004", f"{requested} is in use in L3 network {l3_uuid}")
            log.info("address %s of L3 %s was taken concurrently (attempt %d); retrying", int_to_ip(value),
                     l3_uuid, attempt)
            STATS["clashes"] += 1
            clashed.add(value)
            continue
        return Allocation(used_ip_uuid=row_uuid, ip=int_to_ip(value), ip_int=value, ip_range_uuid=rng.uuid,
                          netmask=rng.netmask, gateway=rng.gateway, attempts=attempt)
    raise AssertionError("unreachable")  # pragma: no cover


STATS = {"clashes": 0}
"""Inserts that lost a race to another allocator in this process (and were retried)."""
