"""The ``compute`` service: one bus address, its work split by resource into parts.

ZStack runs zone, cluster, host and VM services; here they are parts of one service (the header
messages address ``compute``), each in its own module with its own ``@handles`` methods:
:mod:`.zone`, :mod:`.cluster`, :mod:`.offering`, :mod:`.host`, :mod:`.vm`, :mod:`.vm_devices`,
:mod:`.migration`. The service collects
their handlers, starts the host tracker and the VM state sync, and closes every libvirt
connection when the node stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from zstack_core import Message, MessageReply, Service

try:
    from zstack_core.plugins import current_node
except ImportError:  # a kernel without it: one node per process is then assumed
    def current_node() -> Any:
        return None

from .errors import HostErrors

if TYPE_CHECKING:
    from zstack_core import ManagementNode

__all__ = ["ComputeService", "Part", "compute_of"]

log = logging.getLogger("zstack.kvm")
T = TypeVar("T")

_services: dict[int, ComputeService] = {}
"""id(node) -> its compute service, for hookimpls, which get no ``node`` argument."""


def compute_of(node: ManagementNode | None = None) -> ComputeService:
    """The compute service of ``node``, else of the node whose hook is running."""
    node = node if node is not None else current_node()
    if node is not None:
        service = _services.get(id(node))
        if service is not None:
            return service
    if len(_services) == 1:  # e.g. a hook called from outside any hook call
        return next(iter(_services.values()))
    raise HostErrors.exc("1000", "no compute service is running on this node")


class Part:
    """A piece of the compute service (zones, hosts, VMs...). Subclasses mark handlers with
    ``@handles``; the service routes the messages to them."""

    def __init__(self, service: ComputeService) -> None:
        self.service = service

    @property
    def node(self) -> ManagementNode:
        return self.service.node

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.node.db.run(fn, *args)

    async def atomic(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.node.db.atomic(fn, *args)


class ComputeService(Service):
    """Zones, clusters, instance offerings, KVM hosts and VM instances."""

    id = "compute"
    start_order = 50

    def __init__(self) -> None:
        super().__init__()
        from .allocator import HostAllocator
        from .cluster import ClusterPart
        from .host import HostPart
        from .migration import MigrationPart
        from .offering import InstanceOfferingPart
        from .vm import VmPart
        from .vm_devices import VmDevicePart
        from .vmsync import VmStateSync
        from .zone import ZonePart

        self.zones = ZonePart(self)
        self.clusters = ClusterPart(self)
        self.offerings = InstanceOfferingPart(self)
        self.hosts = HostPart(self)
        self.vms = VmPart(self)
        self.vm_devices = VmDevicePart(self)
        self.migration = MigrationPart(self)
        self.sync = VmStateSync(self)
        self.allocator = HostAllocator(self)
        self.parts: list[Part] = [self.zones, self.clusters, self.offerings, self.hosts, self.vms, self.vm_devices,
                                  self.migration]
        self._recovery: asyncio.Task[None] | None = None

    def handlers(self) -> dict[type[Message], Callable[[Message], Awaitable[MessageReply | None]]]:
        out: dict[type[Message], Callable[[Message], Awaitable[MessageReply | None]]] = {}
        for part in self.parts:
            for klass in reversed(type(part).__mro__):
                for name, fn in vars(klass).items():
                    for mtype in getattr(fn, "__zstack_handles__", ()):
                        if mtype in out:
                            raise TypeError(f"{mtype.__name__} is handled twice in the compute service")
                        out[mtype] = getattr(part, name)
        return out

    async def start(self) -> None:
        _services[id(self.node)] = self
        try:
            await self.allocator.load_strategies()
            await self.vms.recover_interrupted()
            await self.hosts.start()
            self.sync.start()
            if self.vms.interrupted_creates:  # after the hosts reconnect, in the background
                self._recovery = asyncio.get_running_loop().create_task(
                    self.vms.roll_back_interrupted_creates(self.vms.interrupted_creates),
                    name="zstack-kvm-roll-back-interrupted-creates")
        except BaseException:
            _services.pop(id(self.node), None)
            raise

    async def stop(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        try:
            await self.sync.stop()
            await self.hosts.stop()
        finally:
            _services.pop(id(self.node), None)
