"""Hypervisor-neutral descriptions of devices a VM gets (ZStack's ``VolumeTO``/``NicTO``).

Storage and network describe their devices with these; the hypervisor plugin turns them into
its own configuration (libvirt domain XML for KVM).
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class DiskTO:
    volume_uuid: str
    path: str
    format: str = "qcow2"
    device_id: int = 0
    bus: str = "virtio"
    source_type: str = "file"
    """``file`` (a path), ``block`` (a device) or ``volume`` (``pool`` + ``path`` as the name)."""
    pool: str | None = None
    read_only: bool = False
    device: str = "disk"
    """``disk`` or ``cdrom``."""


@attrs.frozen(kw_only=True)
class NicTO:
    nic_uuid: str
    mac: str
    device_id: int = 0
    model: str = "virtio"
    bridge: str | None = None
    """Attach to this Linux bridge..."""
    network: str | None = None
    """...or to this libvirt network."""
    filter_name: str | None = None
    """A libvirt nwfilter to apply, if the security-group backend uses one."""
