"""Compute's API messages and their answers, with REST routes as ZStack declares them.

Every message is handled by the ``compute`` service. Fields are snake_case here and camelCase on
the wire (``clusterUuid``). The resource an API acts on is ``uuid``; other ``*_uuid`` fields name
resources it uses. Sizes (``memorySize``, ``rootDiskSize``) are bytes.
"""

from __future__ import annotations

import attrs

from zstack_core import APIEvent, APIMessage, APIReply
from zstack_core.header import (
    ClusterInventory,
    HostInventory,
    InstanceOfferingInventory,
    VmInstanceInventory,
    VmNicInventory,
    ZoneInventory,
)

SERVICE = "compute"


LONG_API_TIMEOUT = 1800.0
"""Seconds a long compute API (a job) may run: starting many VMs on a loaded host, evacuating a
host or a cascade delete take far longer than the bus's default 30 s."""


@attrs.define(kw_only=True)
class _ComputeApi(APIMessage):
    SERVICE_ID = SERVICE

    def __attrs_post_init__(self) -> None:
        if type(self).LONG_RUNNING and self.timeout is None:
            self.timeout = LONG_API_TIMEOUT


# -- zones ------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateZoneMsg(_ComputeApi):
    """Create a zone (a data center: the top of the zone -> cluster -> host tree)."""

    name: str
    description: str = ""


@attrs.define(kw_only=True)
class APIUpdateZoneMsg(_ComputeApi):
    uuid: str
    name: str | None = None
    description: str | None = None


@attrs.define(kw_only=True)
class APIChangeZoneStateMsg(_ComputeApi):
    """``stateEvent``: ``enable`` or ``disable``; no VM is placed in a disabled zone."""

    uuid: str
    state_event: str


@attrs.define(kw_only=True)
class APIDeleteZoneMsg(_ComputeApi):
    """Delete a zone and, through the cascade, its clusters, hosts and VMs.

    ``deleteMode``: ``Permissive`` (any plugin may refuse) or ``Enforcing`` (delete regardless)."""

    LONG_RUNNING = True
    uuid: str
    delete_mode: str = "Permissive"


@attrs.define(kw_only=True)
class APIZoneEvent(APIEvent):
    inventory: ZoneInventory | None = None


# -- clusters ---------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateClusterMsg(_ComputeApi):
    zone_uuid: str
    name: str
    description: str = ""
    hypervisor_type: str = "KVM"


@attrs.define(kw_only=True)
class APIUpdateClusterMsg(_ComputeApi):
    uuid: str
    name: str | None = None
    description: str | None = None


@attrs.define(kw_only=True)
class APIChangeClusterStateMsg(_ComputeApi):
    uuid: str
    state_event: str


@attrs.define(kw_only=True)
class APIDeleteClusterMsg(_ComputeApi):
    LONG_RUNNING = True
    uuid: str
    delete_mode: str = "Permissive"


@attrs.define(kw_only=True)
class APIClusterEvent(APIEvent):
    inventory: ClusterInventory | None = None


# -- instance offerings -----------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateInstanceOfferingMsg(_ComputeApi):
    name: str
    cpu_num: int
    memory_size: int
    description: str = ""
    allocator_strategy: str | None = None


@attrs.define(kw_only=True)
class APIUpdateInstanceOfferingMsg(_ComputeApi):
    uuid: str
    name: str | None = None
    description: str | None = None


@attrs.define(kw_only=True)
class APIChangeInstanceOfferingStateMsg(_ComputeApi):
    uuid: str
    state_event: str


@attrs.define(kw_only=True)
class APIDeleteInstanceOfferingMsg(_ComputeApi):
    uuid: str
    delete_mode: str = "Permissive"


@attrs.define(kw_only=True)
class APIInstanceOfferingEvent(APIEvent):
    inventory: InstanceOfferingInventory | None = None


# -- hosts ------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APIAddKVMHostMsg(_ComputeApi):
    """Add a KVM host by its libvirt URI (``url``: ``qemu:///system``, ``qemu+ssh://root@h/system``,
    ``qemu+tcp://h/system``, ``test:///default``, ``test:///path/driver.xml``) or by
    ``managementIp`` (reached as ``qemu+ssh://{username}@{managementIp}:{sshPort}/system``)."""

    LONG_RUNNING = True
    name: str
    cluster_uuid: str
    url: str | None = None
    management_ip: str | None = None
    username: str = "root"
    ssh_port: int = 22
    description: str = ""


@attrs.define(kw_only=True)
class APIUpdateHostMsg(_ComputeApi):
    uuid: str
    name: str | None = None
    description: str | None = None


@attrs.define(kw_only=True)
class APIChangeHostStateMsg(_ComputeApi):
    """``stateEvent``: ``enable``, ``disable`` or ``maintain`` (migrate or stop every VM on the
    host, at most ``kvm/vm.migrationQuantity`` at a time, then enter Maintenance)."""

    LONG_RUNNING = True
    uuid: str
    state_event: str


@attrs.define(kw_only=True)
class APIReconnectHostMsg(_ComputeApi):
    LONG_RUNNING = True
    uuid: str


@attrs.define(kw_only=True)
class APIDeleteHostMsg(_ComputeApi):
    LONG_RUNNING = True
    uuid: str
    delete_mode: str = "Permissive"


@attrs.define(kw_only=True)
class APIHostEvent(APIEvent):
    inventory: HostInventory | None = None


# -- VM instances -----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateVmInstanceMsg(_ComputeApi):
    """Create a VM: an instance offering *or* ``cpuNum`` + ``memorySize``; an image, L3 networks
    and data disk offerings when storage and network are installed; placement by zone, cluster
    or host; ``strategy`` ``InstantStart`` (default) or ``CreateStopped``."""

    LONG_RUNNING = True
    name: str
    instance_offering_uuid: str | None = None
    cpu_num: int | None = None
    memory_size: int | None = None
    image_uuid: str | None = None
    l3_network_uuids: list[str] = attrs.field(factory=list)
    root_disk_size: int | None = None
    data_disk_offering_uuids: list[str] = attrs.field(factory=list)
    data_disk_sizes: list[int] = attrs.field(factory=list)
    zone_uuid: str | None = None
    cluster_uuid: str | None = None
    host_uuid: str | None = None
    strategy: str = "InstantStart"
    description: str = ""


@attrs.define(kw_only=True)
class APIUpdateVmInstanceMsg(_ComputeApi):
    uuid: str
    name: str | None = None
    description: str | None = None


@attrs.define(kw_only=True)
class APIStartVmInstanceMsg(_ComputeApi):
    LONG_RUNNING = True
    uuid: str
    host_uuid: str | None = None
    cluster_uuid: str | None = None


@attrs.define(kw_only=True)
class APIStopVmInstanceMsg(_ComputeApi):
    """``type``: ``grace`` (ask the guest to power off, destroy it after ``kvm/vm.stopTimeout``
    seconds) or ``cold`` (power off at once)."""

    LONG_RUNNING = True
    uuid: str
    type: str = "grace"


@attrs.define(kw_only=True)
class APIRebootVmInstanceMsg(_ComputeApi):
    LONG_RUNNING = True
    uuid: str


@attrs.define(kw_only=True)
class APIPauseVmInstanceMsg(_ComputeApi):
    uuid: str


@attrs.define(kw_only=True)
class APIResumeVmInstanceMsg(_ComputeApi):
    uuid: str


@attrs.define(kw_only=True)
class APIDestroyVmInstanceMsg(_ComputeApi):
    """Power the VM off and free its host capacity; it stays (``Destroyed``) until expunged and
    can be recovered."""

    LONG_RUNNING = True
    uuid: str
    delete_mode: str = "Permissive"


@attrs.define(kw_only=True)
class APIRecoverVmInstanceMsg(_ComputeApi):
    uuid: str


@attrs.define(kw_only=True)
class APIExpungeVmInstanceMsg(_ComputeApi):
    """Delete a destroyed VM for good: every service releases what it allocated for it."""

    LONG_RUNNING = True
    uuid: str


@attrs.define(kw_only=True)
class APIMigrateVmMsg(_ComputeApi):
    LONG_RUNNING = True
    vm_instance_uuid: str
    host_uuid: str | None = None


@attrs.define(kw_only=True)
class APIVmInstanceEvent(APIEvent):
    inventory: VmInstanceInventory | None = None


@attrs.define(kw_only=True)
class APIGetVmConsoleAddressMsg(_ComputeApi):
    uuid: str


@attrs.define(kw_only=True)
class APIGetVmConsoleAddressReply(APIReply):
    host_ip: str = ""
    port: int = 0
    protocol: str = ""


@attrs.define(kw_only=True)
class APIAttachL3NetworkToVmMsg(_ComputeApi):
    """Give the VM a NIC on the L3 network (allocated by the network service), hot-plugged if
    the VM runs."""

    LONG_RUNNING = True
    vm_instance_uuid: str
    l3_network_uuid: str
    static_ip: str | None = None


@attrs.define(kw_only=True)
class APIDetachL3NetworkFromVmMsg(_ComputeApi):
    LONG_RUNNING = True
    vm_nic_uuid: str


@attrs.define(kw_only=True)
class APIVmNicEvent(APIEvent):
    inventory: VmInstanceInventory | None = None
    nic: VmNicInventory | None = None
