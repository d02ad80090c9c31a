"""Host allocation: which host takes a VM, and the capacity bookkeeping that goes with it.

Allocation (ZStack's host allocator chain): candidates are the Connected, Enabled KVM hosts of
enabled clusters and zones within the requested zone/cluster/host; compute's capacity filter
drops those without the CPUs and memory; then every ``zstack_host_allocator_filters`` filter of
other plugins (storage keeps hosts that reach the VM's primary storage...); a strategy (from
``zstack_host_allocator_strategies``, chosen by the instance offering's ``allocatorStrategy``)
orders what is left; the first host whose capacity can still be taken wins.

Capacity is taken and given back only by :func:`take_sync` and :func:`give_back_sync`, each one
transaction that moves the VM's ``host_uuid`` together with the host's available CPU and memory.
Taking is a conditional ``UPDATE ... WHERE available >= wanted``: two allocations racing for the
last memory cannot both win, and the counters never go negative. Giving back is conditional on
the VM still holding that host, so it happens exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
import peewee

from zstack_core.header import HostInventory, VmInstanceSpec
from zstack_core.header.backends import HostAllocatorStrategy

from .errors import HostErrors, VmErrors
from .models import ClusterVO, HostVO, VmInstanceVO, ZoneVO
from zstack_core.prepared import Prepared

if TYPE_CHECKING:
    from .service import ComputeService

__all__ = [
    "AllocationRequest",
    "HostAllocator",
    "LastHostPreferredStrategy",
    "LeastUsedStrategy",
    "RandomStrategy",
    "give_back_sync",
    "recompute_sync",
    "move_sync",
    "take_and_read_sync",
    "take_sync",
    "unreserve_sync",
]


@attrs.frozen(kw_only=True)
class AllocationRequest:
    """What a VM needs and where it may go."""

    vm_uuid: str
    cpu: int
    memory: int
    zone_uuid: str | None = None
    cluster_uuid: str | None = None
    host_uuid: str | None = None
    exclude: tuple[str, ...] = ()
    strategy: str | None = None


class LeastUsedStrategy(HostAllocatorStrategy):
    """The host with the most free memory, then the most free CPUs (spreads load)."""

    name = "LeastUsedHostAllocatorStrategy"

    def order(self, hosts: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        return sorted(hosts, key=lambda h: (-h.available_memory, -h.available_cpu, h.uuid))


class LastHostPreferredStrategy(LeastUsedStrategy):
    """The VM's last host when it fits (its disks may be there), else the least used; the
    default."""

    name = "LastHostPreferredAllocatorStrategy"

    def order(self, hosts: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        ordered = super().order(hosts, spec)
        return sorted(ordered, key=lambda h: h.uuid != spec.vm.last_host_uuid)


class RandomStrategy(HostAllocatorStrategy):
    """Any host that fits, at random."""

    name = "RandomHostAllocatorStrategy"

    def order(self, hosts: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        out = list(hosts)
        random.shuffle(out)
        return out


DEFAULT_STRATEGY = LastHostPreferredStrategy.name


# -- capacity bookkeeping (database thread, inside a transaction) ------------------------------


def take_sync(vm_uuid: str | None, host_uuid: str, cpu: int, memory: int) -> bool:
    """Reserve ``cpu``/``memory`` on the host and place the VM there (``vm_uuid`` None: only
    reserve, for a migration's destination), or change nothing and return False when the host
    no longer has room."""
    return take_and_read_sync(vm_uuid, host_uuid, cpu, memory) is not None


# The statements of every VM create, compiled once (see .prepared).
_TAKE = Prepared(lambda p: HostVO.update(available_cpu=HostVO.available_cpu - p.cpu_int,
                                         available_memory=HostVO.available_memory - p.memory_int)
                 .where((HostVO.uuid == p.host) & (HostVO.available_cpu >= p.cpu_int)
                        & (HostVO.available_memory >= p.memory_int)))
_HOST = Prepared(lambda p: HostVO.select().where(HostVO.uuid == p.host))
_PLACE = Prepared(lambda p: VmInstanceVO.update(host_uuid=p.host, cluster_uuid=p.cluster, zone_uuid=p.zone)
                  .where((VmInstanceVO.uuid == p.vm) & VmInstanceVO.host_uuid.is_null()))


def take_and_read_sync(vm_uuid: str | None, host_uuid: str, cpu: int, memory: int) -> HostVO | None:
    """:func:`take_sync`, returning the host's row as the reservation left it (None: no room).
    The allocator hands that row on as the VM's destination instead of reading it again."""
    if _TAKE.run(host=host_uuid, cpu_int=cpu, memory_int=memory).rowcount != 1:
        return None
    found = _HOST.rows(HostVO, host=host_uuid)
    if not found:
        raise HostErrors.exc("1007", f"no host {host_uuid}")
    host = found[0]
    if vm_uuid is None:
        return host  # type: ignore[no-any-return]
    placed = _PLACE.run(host=host_uuid, cluster=host.cluster_uuid, zone=host.zone_uuid, vm=vm_uuid).rowcount
    if placed != 1:
        raise VmErrors.exc("1000", f"VM {vm_uuid} is gone or already placed on a host")
    return host  # type: ignore[no-any-return]


def give_back_sync(vm_uuid: str, **vm_fields: Any) -> str | None:
    """Return the capacity the VM holds (if any) and clear its ``host_uuid``, also writing
    ``vm_fields`` (its new state...). Returns the host it left, or None."""
    vm = VmInstanceVO.get_or_none(VmInstanceVO.uuid == vm_uuid)
    if vm is None:
        return None
    if vm.host_uuid is None:
        if vm_fields:
            VmInstanceVO.update(**vm_fields).where(VmInstanceVO.uuid == vm_uuid).execute()
        return None
    host_uuid = vm.host_uuid
    cleared = (VmInstanceVO.update(host_uuid=None, **vm_fields)
               .where((VmInstanceVO.uuid == vm_uuid) & (VmInstanceVO.host_uuid == host_uuid)).execute())
    if cleared == 1:
        (HostVO.update(available_cpu=HostVO.available_cpu + vm.cpu_num,
                       available_memory=HostVO.available_memory + vm.memory_size)
         .where(HostVO.uuid == host_uuid).execute())
        return str(host_uuid)
    return None


def unreserve_sync(host_uuid: str, cpu: int, memory: int) -> None:
    """Give back a reservation made with ``take_sync(None, ...)`` (a failed migration)."""
    (HostVO.update(available_cpu=HostVO.available_cpu + cpu, available_memory=HostVO.available_memory + memory)
     .where(HostVO.uuid == host_uuid).execute())


def move_sync(vm_uuid: str, source_uuid: str, destination_uuid: str) -> bool:
    """A migrated VM now holds its (already reserved) destination and gives its source back."""
    vm = VmInstanceVO.get_or_none(VmInstanceVO.uuid == vm_uuid)
    if vm is None or vm.host_uuid != source_uuid:
        return False
    dest = HostVO.get(HostVO.uuid == destination_uuid)
    VmInstanceVO.update(host_uuid=destination_uuid, last_host_uuid=source_uuid, cluster_uuid=dest.cluster_uuid,
                        zone_uuid=dest.zone_uuid).where(VmInstanceVO.uuid == vm_uuid).execute()
    unreserve_sync(source_uuid, vm.cpu_num, vm.memory_size)
    return True


def recompute_sync(host_uuid: str, *, total_cpu: int | None = None, total_memory: int | None = None,
                   reserved_cpu: int | None = None, reserved_memory: int | None = None) -> HostVO | None:
    """Set the host's totals and reservations (those given) and recompute what is available
    from the VMs placed on it: ``available = total - reserved - used``."""
    host = HostVO.get_or_none(HostVO.uuid == host_uuid)
    if host is None:
        return None
    if total_cpu is not None:
        host.total_cpu = total_cpu
    if total_memory is not None:
        host.total_memory = total_memory
    if reserved_cpu is not None:
        host.reserved_cpu = reserved_cpu
    if reserved_memory is not None:
        host.reserved_memory = reserved_memory
    used = (VmInstanceVO.select(peewee.fn.COALESCE(peewee.fn.SUM(VmInstanceVO.cpu_num), 0),
                                peewee.fn.COALESCE(peewee.fn.SUM(VmInstanceVO.memory_size), 0))
            .where(VmInstanceVO.host_uuid == host_uuid).tuples().get())
    used_cpu, used_memory = cast(tuple[int, int], used)
    host.available_cpu = host.total_cpu - host.reserved_cpu - int(used_cpu)
    host.available_memory = host.total_memory - host.reserved_memory - int(used_memory)
    host.save()
    return host


class HostAllocator:
    """Picks and reserves a host for a VM."""

    def __init__(self, service: ComputeService) -> None:
        self.service = service
        self.strategies: dict[str, HostAllocatorStrategy] = {}

    async def load_strategies(self) -> None:
        """Compute's own strategies, and every plugin's ``zstack_host_allocator_strategies``
        (collected when the service starts)."""
        self.strategies = {s.name: s for s in (LastHostPreferredStrategy(), LeastUsedStrategy(), RandomStrategy())}
        hooks = self.service.node.hooks
        if not hasattr(hooks, "host_allocator_strategies"):
            return  # a kernel older than the extension point
        for plugin, strategy in hooks.host_allocator_strategies():
            if not isinstance(strategy, HostAllocatorStrategy) or not strategy.name:
                raise TypeError(f"plugin {plugin!r}: zstack_host_allocator_strategies must return named "
                                f"HostAllocatorStrategy objects, got {strategy!r}")
            if strategy.name in self.strategies:
                raise ValueError(f"plugin {plugin!r} provides the host allocator strategy {strategy.name!r}, "
                                 f"which compute or another plugin already provides")
            self.strategies[strategy.name] = strategy

    def strategy_names(self) -> list[str]:
        return sorted(self.strategies)

    @staticmethod
    def _candidates_query(p: Any, zone: bool, cluster: bool, host: bool) -> Any:
        q = (HostVO.select(HostVO)
             .join(ClusterVO, on=(HostVO.cluster_uuid == ClusterVO.uuid))
             .switch(HostVO).join(ZoneVO, on=(HostVO.zone_uuid == ZoneVO.uuid))
             .where((HostVO.status == p.connected) & (HostVO.state == p.enabled) & (HostVO.hypervisor_type == p.kvm)
                    & (ClusterVO.state == p.enabled) & (ZoneVO.state == p.enabled)))
        if zone:
            q = q.where(HostVO.zone_uuid == p.zone)
        if cluster:
            q = q.where(HostVO.cluster_uuid == p.cluster)
        if host:
            q = q.where(HostVO.uuid == p.host)
        return q

    _CANDIDATES: dict[tuple[bool, bool, bool], Prepared] = {}
    """One compiled candidates query per combination of zone/cluster/host given."""

    def _candidates_sync(self, request: AllocationRequest) -> list[HostInventory]:
        key = (bool(request.zone_uuid), bool(request.cluster_uuid), bool(request.host_uuid))
        params = {"connected": "Connected", "enabled": "Enabled", "kvm": "KVM", "zone": request.zone_uuid,
                  "cluster": request.cluster_uuid, "host": request.host_uuid}
        if request.exclude:  # a list of any length: composed each time (migrations only)
            class Values:
                def __getattr__(self, name: str) -> Any:
                    return params[name]

            q = self._candidates_query(Values(), *key).where(HostVO.uuid.not_in(list(request.exclude)))
            return [h.to_inventory() for h in q]
        prepared = self._CANDIDATES.get(key)
        if prepared is None:
            prepared = self._CANDIDATES[key] = Prepared(lambda p: self._candidates_query(p, *key))
        return [h.to_inventory() for h in prepared.rows(HostVO, **params)]

    @staticmethod
    def _scope(request: AllocationRequest) -> str:
        if request.host_uuid:
            return f"host {request.host_uuid}"
        if request.cluster_uuid:
            return f"cluster {request.cluster_uuid}"
        if request.zone_uuid:
            return f"zone {request.zone_uuid}"
        return "any zone"

    async def allocate(self, request: AllocationRequest, spec: VmInstanceSpec, place: bool = True) -> HostInventory:
        """Reserve capacity on a host and place the VM there (``place`` False: only reserve);
        ``HOST.1004`` when none can take it."""
        db = self.service.node.db
        candidates = await db.run(self._candidates_sync, request)
        scope = self._scope(request)
        if not candidates:
            raise HostErrors.exc("1004", f"no Connected and Enabled KVM host (in an enabled cluster and zone) in {scope}")
        fit = [h for h in candidates if h.available_cpu >= request.cpu and h.available_memory >= request.memory]
        if not fit:
            best = max(candidates, key=lambda h: (h.available_memory, h.available_cpu))
            raise HostErrors.exc("1004", f"the VM needs {request.cpu} CPUs and {request.memory} bytes of memory; the "
                                         f"host with the most room in {scope} has {best.available_cpu} CPUs and "
                                         f"{best.available_memory} bytes free")
        for host_filter in self.service.node.extension("host_allocator_filters"):
            fit = list(await host_filter.filter(fit, spec))
            if not fit:
                name = getattr(host_filter, "name", "") or type(host_filter).__name__
                raise HostErrors.exc("1004", f"host allocator filter {name} left no host in {scope}")
        strategy = self.strategies.get(request.strategy or DEFAULT_STRATEGY)
        if strategy is None:
            raise HostErrors.exc("1000", f"unknown host allocator strategy {request.strategy!r}")
        for host in strategy.order(fit, spec):
            row = await db.atomic(take_and_read_sync, request.vm_uuid if place else None, host.uuid, request.cpu,
                                  request.memory)
            if row is not None:
                return row.to_inventory()  # type: ignore[no-any-return]
        raise HostErrors.exc("1004", f"other VMs took the remaining capacity in {scope} while this one was placed")

    async def release(self, vm_uuid: str, **vm_fields: Any) -> str | None:
        """Give back what the VM holds (see :func:`give_back_sync`)."""
        return await self.service.node.db.atomic(give_back_sync, vm_uuid, **vm_fields)


def host_inventories(rows: Sequence[HostVO]) -> list[HostInventory]:
    return [r.to_inventory() for r in rows]
