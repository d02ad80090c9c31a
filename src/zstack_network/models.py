"""The network service's tables.

Addresses are stored twice: as text (what users see) and as an integer (what range arithmetic
and the uniqueness guarantee use). ``UsedIpVO`` is unique on ``(l3_network_uuid, ip_int)`` and
``VmNicVO`` on ``mac``: the database, not a lock in one process, is what keeps an address or a
MAC from being handed out twice, so the guarantee holds for several processes and nodes on one
database.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import peewee

from zstack_core.db import BaseModel, ModelRegistration, ResourceModel, utcnow
from zstack_core.header import IpRangeInventory, L2NetworkInventory, L3NetworkInventory, VmNicInventory

from .inventories import (
    ReservedIpRangeInventory,
    SecurityGroupInventory,
    SecurityGroupRuleInventory,
    VmNicSecurityGroupRefInventory,
)

SCHEMA = "zstack_network"


def _fk(model: type[BaseModel], column: str, on_delete: str) -> Any:
    # Named after the inventory attribute (``l3_network_uuid``), so rows convert to inventories
    # and queries accept the inventory's field names; reading it gives the UUID, never a query.
    return peewee.ForeignKeyField(model, column_name=column, on_delete=on_delete, lazy_load=False)


class L2NetworkVO(ResourceModel):
    RESOURCE_TYPE = "L2Network"
    INVENTORY = L2NetworkInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    zone_uuid = peewee.CharField(max_length=32, index=True)
    physical_interface = peewee.CharField(max_length=15)
    type = peewee.CharField(max_length=32)
    vlan = peewee.IntegerField(null=True)
    bridge_name = peewee.CharField(max_length=15)

    class Meta:
        table_name = "l2_network"
        # Two L2 networks of one zone on the same bridge would fight over it on every host.
        indexes = ((("zone_uuid", "bridge_name"), True),)


class L2NetworkClusterRefVO(BaseModel):
    id = peewee.AutoField()
    l2_network_uuid = _fk(L2NetworkVO, "l2_network_uuid", "CASCADE")
    cluster_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "l2_network_cluster_ref"
        indexes = ((("l2_network_uuid", "cluster_uuid"), True),)


class L2NetworkHostRefVO(BaseModel):
    """Where an L2 network was realized, so detaching and deleting undo it on those hosts."""

    id = peewee.AutoField()
    l2_network_uuid = _fk(L2NetworkVO, "l2_network_uuid", "CASCADE")
    host_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "l2_network_host_ref"
        indexes = ((("l2_network_uuid", "host_uuid"), True),)


class L3NetworkVO(ResourceModel):
    RESOURCE_TYPE = "L3Network"
    INVENTORY = L3NetworkInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    l2_network_uuid = _fk(L2NetworkVO, "l2_network_uuid", "RESTRICT")
    zone_uuid = peewee.CharField(max_length=32, index=True)
    type = peewee.CharField(max_length=32, default="L3BasicNetwork")
    state = peewee.CharField(max_length=32, default="Enabled")
    dns_domain = peewee.CharField(max_length=255, null=True)
    enable_dhcp = peewee.BooleanField(default=True)
    ip_allocation_strategy = peewee.CharField(max_length=64, default="FirstAvailable")

    class Meta:
        table_name = "l3_network"


class L3NetworkDnsVO(BaseModel):
    id = peewee.AutoField()
    l3_network_uuid = _fk(L3NetworkVO, "l3_network_uuid", "CASCADE")
    dns = peewee.CharField(max_length=64)
    position = peewee.IntegerField(default=0)

    class Meta:
        table_name = "l3_network_dns"
        indexes = ((("l3_network_uuid", "dns"), True),)


class IpRangeVO(ResourceModel):
    RESOURCE_TYPE = "IpRange"
    INVENTORY = IpRangeInventory

    l3_network_uuid = _fk(L3NetworkVO, "l3_network_uuid", "RESTRICT")
    name = peewee.CharField(max_length=255, default="")
    description = peewee.TextField(default="")
    start_ip = peewee.CharField(max_length=64)
    end_ip = peewee.CharField(max_length=64)
    netmask = peewee.CharField(max_length=64)
    gateway = peewee.CharField(max_length=64)
    network_cidr = peewee.CharField(max_length=64)
    start_int = peewee.BigIntegerField()
    end_int = peewee.BigIntegerField()
    ip_version = peewee.IntegerField(default=4)

    class Meta:
        table_name = "ip_range"


class ReservedIpRangeVO(ResourceModel):
    RESOURCE_TYPE = "ReservedIpRange"
    INVENTORY = ReservedIpRangeInventory

    l3_network_uuid = _fk(L3NetworkVO, "l3_network_uuid", "CASCADE")
    start_ip = peewee.CharField(max_length=64)
    end_ip = peewee.CharField(max_length=64)
    start_int = peewee.BigIntegerField()
    end_int = peewee.BigIntegerField()
    description = peewee.TextField(default="")

    class Meta:
        table_name = "reserved_ip_range"


class UsedIpVO(ResourceModel):
    """An address taken from a range. The unique index is the no-double-allocation guarantee;
    the foreign key to the range (RESTRICT) means a range cannot vanish under an address."""

    RESOURCE_TYPE = "UsedIp"

    l3_network_uuid = _fk(L3NetworkVO, "l3_network_uuid", "RESTRICT")
    ip_range_uuid = _fk(IpRangeVO, "ip_range_uuid", "RESTRICT")
    ip = peewee.CharField(max_length=64)
    ip_int = peewee.BigIntegerField()
    vm_nic_uuid = peewee.CharField(max_length=32, null=True, index=True)

    class Meta:
        table_name = "used_ip"
        indexes = ((("l3_network_uuid", "ip_int"), True),)


class VmNicVO(ResourceModel):
    RESOURCE_TYPE = "VmNic"
    INVENTORY = VmNicInventory

    vm_instance_uuid = peewee.CharField(max_length=32, index=True)
    l3_network_uuid = _fk(L3NetworkVO, "l3_network_uuid", "RESTRICT")
    used_ip_uuid = peewee.CharField(max_length=32, null=True)
    ip = peewee.CharField(max_length=64, null=True)
    netmask = peewee.CharField(max_length=64, null=True)
    gateway = peewee.CharField(max_length=64, null=True)
    mac = peewee.CharField(max_length=17, unique=True)
    device_id = peewee.IntegerField(default=0)
    internal_name = peewee.CharField(max_length=15, default="")

    class Meta:
        table_name = "vm_nic"


class DhcpNetworkHostRefVO(BaseModel):
    """A host where an L3 network's DHCP server (a libvirt network running dnsmasq) exists."""

    id = peewee.AutoField()
    l3_network_uuid = peewee.CharField(max_length=32, index=True)
    host_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "dhcp_network_host_ref"
        indexes = ((("l3_network_uuid", "host_uuid"), True),)


class SecurityGroupVO(ResourceModel):
    RESOURCE_TYPE = "SecurityGroup"
    INVENTORY = SecurityGroupInventory

    name = peewee.CharField(max_length=255)
    description = peewee.TextField(default="")
    state = peewee.CharField(max_length=32, default="Enabled")

    class Meta:
        table_name = "security_group"


class SecurityGroupRuleVO(ResourceModel):
    RESOURCE_TYPE = "SecurityGroupRule"
    INVENTORY = SecurityGroupRuleInventory

    security_group_uuid = _fk(SecurityGroupVO, "security_group_uuid", "CASCADE")
    type = peewee.CharField(max_length=16)
    protocol = peewee.CharField(max_length=16)
    start_port = peewee.IntegerField(null=True)
    end_port = peewee.IntegerField(null=True)
    allowed_cidr = peewee.CharField(max_length=64, null=True)
    remote_security_group_uuid = peewee.CharField(max_length=32, null=True, index=True)

    class Meta:
        table_name = "security_group_rule"



class SecurityGroupL3NetworkRefVO(BaseModel):
    id = peewee.AutoField()
    security_group_uuid = _fk(SecurityGroupVO, "security_group_uuid", "CASCADE")
    l3_network_uuid = _fk(L3NetworkVO, "l3_network_uuid", "CASCADE")

    class Meta:
        table_name = "security_group_l3_network_ref"
        indexes = ((("security_group_uuid", "l3_network_uuid"), True),)


class VmNicSecurityGroupRefVO(ResourceModel):
    RESOURCE_TYPE = "VmNicSecurityGroupRef"
    INVENTORY = VmNicSecurityGroupRefInventory

    vm_nic_uuid = _fk(VmNicVO, "vm_nic_uuid", "CASCADE")
    security_group_uuid = _fk(SecurityGroupVO, "security_group_uuid", "CASCADE")
    vm_instance_uuid = peewee.CharField(max_length=32, index=True)

    class Meta:
        table_name = "vm_nic_security_group_ref"
        indexes = ((("vm_nic_uuid", "security_group_uuid"), True),)



class SecurityGroupAppliedVO(BaseModel):
    """What was last applied for a VM, so a change re-applies only VMs whose rules changed."""

    vm_instance_uuid = peewee.CharField(primary_key=True, max_length=32)
    host_uuid = peewee.CharField(max_length=32)
    digest = peewee.CharField(max_length=64)
    applied_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "security_group_applied"


MODELS: list[type[BaseModel]] = [
    L2NetworkVO, L2NetworkClusterRefVO, L2NetworkHostRefVO, L3NetworkVO, L3NetworkDnsVO, IpRangeVO,
    ReservedIpRangeVO, UsedIpVO, VmNicVO, DhcpNetworkHostRefVO, SecurityGroupVO, SecurityGroupRuleVO,
    SecurityGroupL3NetworkRefVO, VmNicSecurityGroupRefVO, SecurityGroupAppliedVO,
]

REGISTRATION = ModelRegistration(name=SCHEMA, models=MODELS)


def real_database() -> peewee.Database:
    """The database the models are bound to now (behind the proxy)."""
    db = L2NetworkVO._meta.database
    return db.obj if isinstance(db, peewee.DatabaseProxy) else db


@contextlib.contextmanager
def write_transaction() -> Iterator[None]:
    """A transaction that writes (database thread only).

    On SQLite it starts with ``BEGIN IMMEDIATE``: a transaction that reads, then writes, would
    otherwise fail at once with "database is locked" when another process wrote in between (WAL
    cannot upgrade a stale read snapshot); taking the write lock first makes the busy timeout
    apply instead. Elsewhere a plain transaction; nested calls become savepoints.
    """
    db = L2NetworkVO._meta.database
    real = db.obj if isinstance(db, peewee.DatabaseProxy) else db
    if isinstance(real, peewee.SqliteDatabase) and real.transaction_depth() == 0:
        with real.atomic("IMMEDIATE"):
            yield
    else:
        with real.atomic():
            yield


def lock_row(model: type[ResourceModel], uuid: str) -> Any:
    """The row ``uuid`` of ``model``, locked until the transaction ends where the database can
    (``SELECT … FOR UPDATE`` on PostgreSQL/MySQL; SQLite's write lock already covers it), or None."""
    query = model.select().where(model.uuid == uuid)
    db = model._meta.database
    real = db.obj if isinstance(db, peewee.DatabaseProxy) else db
    if real.for_update:
        query = query.for_update()
    return query.first()
