"""Backends that one plugin provides and others look up by type.

Each is registered through its own hook and chosen by a type string, so the caller needs only
these base classes, never the provider's module.
"""

from __future__ import annotations

from collections.abc import Sequence


from .compute import ConsoleAddress, HostInventory, VmInstanceInventory, VmInstanceSpec
from .network import SecurityGroupRuleTO
from .storage import PrimaryStorageInventory


class HypervisorFactory:
    """A hypervisor type (the seed's ``KVMHostFactory``): ``KVM``.

    ``max_data_volume_number`` answers the seed's ``MaxDataVolumeNumberExtensionPoint``.
    """

    hypervisor_type: str = ""
    max_data_volume_number: int = 24


class PrimaryStorageFactory:
    """A primary storage type (``LocalStorage``): how to attach it to hosts and make volumes."""

    type: str = ""

    async def attach_to_host(self, ps: PrimaryStorageInventory, host: HostInventory) -> None:
        raise NotImplementedError


class IpAllocationStrategy:
    """How to pick a free address in an L3 network (``FirstAvailable``, ``Random``)."""

    name: str = ""

    def choose(self, free: Sequence[int], used: set[int]) -> int | None:
        """Pick one of ``free`` (addresses as integers, ascending), or None when none fits."""
        raise NotImplementedError


class SecurityGroupBackend:
    """Applies security-group rules on hosts of one hypervisor type (the seed's
    ``KVMSecurityGroupBackend``). The rules are computed by the network service."""

    hypervisor_type: str = ""

    async def apply_rules(self, host: HostInventory, vm_uuid: str, rules: Sequence[SecurityGroupRuleTO]) -> None:
        """Make the rules of ``vm_uuid``'s NICs on ``host`` exactly ``rules``."""
        raise NotImplementedError

    async def cleanup(self, host: HostInventory, vm_uuid: str) -> None:
        """Remove every rule of ``vm_uuid`` from ``host``."""
        raise NotImplementedError


class ConsoleBackend:
    """Tells where a VM's console listens (the seed's ``KVMConsoleHypervisorBackend``)."""

    hypervisor_type: str = ""

    async def console_address(self, vm: VmInstanceInventory, host: HostInventory) -> ConsoleAddress:
        raise NotImplementedError


class HostAllocatorFilter:
    """Removes hosts that cannot take a VM (capacity, storage reachability, tags)."""

    name: str = ""

    async def filter(self, candidates: list[HostInventory], spec: VmInstanceSpec) -> list[HostInventory]:
        raise NotImplementedError


__all__ = [
    "ConsoleBackend",
    "HostAllocatorFilter",
    "HypervisorFactory",
    "IpAllocationStrategy",
    "PrimaryStorageFactory",
    "SecurityGroupBackend",
]

