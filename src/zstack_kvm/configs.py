"""Compute's global configs and system tags (the seed's ``KVMGlobalConfig``/``KVMSystemTags``).

Configs are read through the node every time they are used, so an ``UpdateGlobalConfig`` takes
effect on the next ping, sync or allocation without a restart.
"""

from __future__ import annotations

from zstack_core.globalconfig import Choices, GlobalConfig, Range
from zstack_core.tags import PatternedSystemTag

__all__ = [
    "BOOT_DEVICES",
    "BOOT_ORDER",
    "CONFIGS",
    "CPU_OVER_PROVISIONING",
    "HOST_CONNECT_TIMEOUT",
    "HOST_LIBVIRT_WORKERS",
    "HOST_MAX_RECONNECT_INTERVAL",
    "HOST_PING_INTERVAL",
    "HVM_CPU_FLAG",
    "LIBVIRT_VERSION",
    "MIGRATION_QUANTITY",
    "QEMU_IMG_VERSION",
    "RESERVED_MEMORY",
    "SYSTEM_TAGS",
    "VM_CPU_MODE",
    "VM_STOP_TIMEOUT",
    "VM_SYNC_INTERVAL",
]

CATEGORY = "kvm"

MIGRATION_QUANTITY = GlobalConfig(
    category=CATEGORY, name="vm.migrationQuantity", type="int", default=2, validators=[Range(min=1)],
    description="How many VMs migrate (or stop) in parallel when a KVM host enters maintenance.")

RESERVED_MEMORY = GlobalConfig(
    category=CATEGORY, name="reservedMemory", type="size", default="512M",
    resource_types=("Host", "Cluster", "Zone"),
    description="Memory held back on every KVM host for the host's own software; can be set per "
                "host, cluster or zone.")

CPU_OVER_PROVISIONING = GlobalConfig(
    category=CATEGORY, name="cpu.overProvisioningRatio", type="int", default=10, validators=[Range(min=1, max=100)],
    resource_types=("Host", "Cluster", "Zone"),
    description="Virtual CPUs a host offers per physical CPU thread (its totalCpu).")

HOST_PING_INTERVAL = GlobalConfig(
    category=CATEGORY, name="host.pingInterval", type="float", default=10.0, validators=[Range(min=0.05)],
    description="Seconds between pings of each connected host's libvirt connection.")

HOST_MAX_RECONNECT_INTERVAL = GlobalConfig(
    category=CATEGORY, name="host.maxReconnectInterval", type="float", default=300.0, validators=[Range(min=0.05)],
    description="Upper bound (seconds) of the exponential back-off between reconnect attempts.")

HOST_CONNECT_TIMEOUT = GlobalConfig(
    category=CATEGORY, name="host.connectTimeout", type="float", default=30.0, validators=[Range(min=0.1)],
    description="Seconds to wait for a libvirt connection to open before the host counts as unreachable.")

HOST_LIBVIRT_WORKERS = GlobalConfig(
    category=CATEGORY, name="host.libvirtWorkers", type="int", default=8, validators=[Range(min=1, max=64)],
    description="Threads calling libvirt for each KVM host, sharing the host's one connection: how many "
                "libvirt calls (domain starts, stops...) run at once on a host. Changes apply within a "
                "ping interval.")

VM_SYNC_INTERVAL = GlobalConfig(
    category=CATEGORY, name="vm.syncInterval", type="float", default=30.0, validators=[Range(min=0.05)],
    description="Seconds between reconciliations of VM states with libvirt (events are only hints).")

VM_STOP_TIMEOUT = GlobalConfig(
    category=CATEGORY, name="vm.stopTimeout", type="float", default=60.0, validators=[Range(min=0)],
    description="Seconds a graceful stop waits for the guest to power off before destroying it.")

VM_CPU_MODE = GlobalConfig(
    category=CATEGORY, name="vm.cpuMode", type="str", default="none",
    validators=[Choices(("none", "host-model", "host-passthrough"))],
    description="The guest CPU: the hypervisor's default model (none), or the host's (host-model, "
                "host-passthrough; needed for nested virtualization, refused by some nested hosts).")

CONFIGS = [MIGRATION_QUANTITY, RESERVED_MEMORY, CPU_OVER_PROVISIONING, HOST_PING_INTERVAL,
           HOST_MAX_RECONNECT_INTERVAL, HOST_CONNECT_TIMEOUT, VM_SYNC_INTERVAL, VM_STOP_TIMEOUT, VM_CPU_MODE,
           HOST_LIBVIRT_WORKERS]

# -- system tags (the seed's KVMSystemTags) ---------------------------------------------------

QEMU_IMG_VERSION = PatternedSystemTag(pattern="qemu-img::version::{version}", resource_type="Host",
                                      description="QEMU version on the host, recorded on connect")
LIBVIRT_VERSION = PatternedSystemTag(pattern="libvirt::version::{version}", resource_type="Host",
                                     description="libvirt version on the host, recorded on connect")
HVM_CPU_FLAG = PatternedSystemTag(pattern="hvm::{flag}", resource_type="Host",
                                  description="hardware virtualization CPU flag (vmx or svm)")
BOOT_ORDER = PatternedSystemTag(pattern="bootOrder::{order}", resource_type="VmInstance",
                                description="boot devices in order, comma separated: hd, cdrom, network")

BOOT_DEVICES = ("hd", "cdrom", "network", "fd")
"""What ``bootOrder::`` may list (libvirt's ``<boot dev=...>``)."""

SYSTEM_TAGS = [QEMU_IMG_VERSION, LIBVIRT_VERSION, HVM_CPU_FLAG, BOOT_ORDER]
