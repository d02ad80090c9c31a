"""Backends that one plugin provides and others look up by type.

Each is registered through its own hook and chosen by a type string, so the caller needs only
these base classes, never the provider's module.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .compute import ConsoleAddress, HostInventory, VmInstanceInventory, VmInstanceSpec
from .devices import DiskTO
from .network import SecurityGroupRuleTO
from .storage import ImageInventory, PrimaryStorageInventory, StorageCapacity, VolumeFacts, VolumeInventory

if TYPE_CHECKING:
    from ..node import ManagementNode


class HypervisorFactory:
    """A hypervisor type (the seed's ``KVMHostFactory``): ``KVM``.

    ``max_data_volume_number`` answers the seed's ``MaxDataVolumeNumberExtensionPoint``.
    """

    hypervisor_type: str = ""
    max_data_volume_number: int = 24


class PrimaryStorageFactory(abc.ABC):
    """A primary storage type (``LocalStorage``): how its volumes are made on hosts.

    The storage service keeps the records (primary storage, volumes, image caches, snapshots) and
    the capacity accounting; it calls the factory chosen by ``PrimaryStorageInventory.type`` for
    the work on hosts. Every method gets the node, so a factory reaches a host the way any service
    does (compute's ``HostRunMsg``). Methods raise ``ZStackError`` to fail and must leave nothing
    behind on the host when they do.
    """

    type: str = ""

    @abc.abstractmethod
    async def attach_to_host(self, node: ManagementNode, ps: PrimaryStorageInventory,
                             host: HostInventory) -> StorageCapacity:
        """Make ``ps`` usable on ``host`` and report its capacity there. Called when ``ps`` is
        attached to the host's cluster and on every (re)connect of the host: idempotent."""
        raise NotImplementedError

    @abc.abstractmethod
    async def detach_from_host(self, node: ManagementNode, ps: PrimaryStorageInventory,
                               host: HostInventory) -> None:
        """Stop using ``ps`` on ``host`` (its volumes are already gone). Idempotent."""
        raise NotImplementedError

    @abc.abstractmethod
    async def create_image_cache(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                                 image: ImageInventory, source_path: str) -> VolumeFacts:
        """Copy the image file ``source_path`` (on the management node) into ``ps`` on ``host``,
        where root volumes are made from it."""
        raise NotImplementedError

    @abc.abstractmethod
    async def create_volume(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                            volume: VolumeInventory, backing: VolumeFacts | None) -> VolumeFacts:
        """Make ``volume`` (``volume.size`` bytes), on top of ``backing`` (an image cache) if given."""
        raise NotImplementedError

    @abc.abstractmethod
    async def delete_volume(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                            install_path: str) -> None:
        """Remove a volume or image cache from ``host``. Idempotent: a missing one is not an error."""
        raise NotImplementedError

    @abc.abstractmethod
    async def resize_volume(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                            volume: VolumeInventory, size: int) -> VolumeFacts:
        """Grow ``volume`` to ``size`` bytes (also while a running VM uses it)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def snapshot(self, node: ManagementNode, ps: PrimaryStorageInventory, host: HostInventory,
                       volume: VolumeInventory, action: str, name: str) -> None:
        """``action`` is ``create``, ``revert`` or ``delete`` the snapshot ``name`` of ``volume``
        (whose VM is stopped)."""
        raise NotImplementedError

    @abc.abstractmethod
    def disk_to(self, volume: VolumeInventory) -> DiskTO:
        """How the hypervisor reaches ``volume``."""
        raise NotImplementedError


class IpAllocationStrategy(abc.ABC):
    """How to pick a free address in an L3 network (``FirstAvailable``, ``Random``)."""

    name: str = ""

    @abc.abstractmethod
    def choose(self, free: Sequence[int], used: set[int]) -> int | None:
        """Pick one of ``free`` (addresses as integers, ascending), or None when none fits."""
        raise NotImplementedError


class SecurityGroupBackend(abc.ABC):
    """Applies security-group rules on hosts of one hypervisor type (the seed's
    ``KVMSecurityGroupBackend``). The rules are computed by the network service."""

    hypervisor_type: str = ""

    @abc.abstractmethod
    async def apply_rules(self, host: HostInventory, vm_uuid: str, rules: Sequence[SecurityGroupRuleTO]) -> None:
        """Make the rules of ``vm_uuid``'s NICs on ``host`` exactly ``rules``."""
        raise NotImplementedError

    @abc.abstractmethod
    async def cleanup(self, host: HostInventory, vm_uuid: str) -> None:
        """Remove every rule of ``vm_uuid`` from ``host``."""
        raise NotImplementedError


class ConsoleBackend(abc.ABC):
    """Tells where a VM's console listens (the seed's ``KVMConsoleHypervisorBackend``)."""

    hypervisor_type: str = ""

    @abc.abstractmethod
    async def console_address(self, vm: VmInstanceInventory, host: HostInventory) -> ConsoleAddress:
        raise NotImplementedError


class HostAllocatorFilter(abc.ABC):
    """Removes hosts that cannot take a VM (capacity, storage reachability, tags)."""

    name: str = ""

    @abc.abstractmethod
    async def filter(self, candidates: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        raise NotImplementedError


class HostAllocatorStrategy(abc.ABC):
    """Orders the hosts that passed every filter; the first that still has room takes the VM.
    ``spec.vm`` is the VM being placed (its ``last_host_uuid`` tells where it ran before)."""

    name: str = ""

    @abc.abstractmethod
    def order(self, hosts: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        raise NotImplementedError


__all__ = [
    "ConsoleBackend",
    "HostAllocatorFilter",
    "HostAllocatorStrategy",
    "HypervisorFactory",
    "IpAllocationStrategy",
    "PrimaryStorageFactory",
    "SecurityGroupBackend",
]

