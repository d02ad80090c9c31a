"""Compute's API interceptors: the seed's ``HostApiInterceptor`` and ``KVMApiInterceptor`` of
``APIAddKVMHostMsg``, and ``VmApiInterceptor`` of ``CreateVmInstance``.

Both are global interceptors (``zstack_api_interceptors``), ordered by ``order``: the kernel
runs global interceptors before per-message ones, and the seed needs ``HostApiInterceptor`` (the
cheap checks of any host API) to run first and ``KVMApiInterceptor`` (which opens a libvirt
connection) only for messages that got past it.
"""

from __future__ import annotations

from typing import Any

from zstack_core import APIMessage, ApiInterceptor, invalid_argument

from .api import (
    APIAddKVMHostMsg,
    APIChangeHostStateMsg,
    APICreateVmInstanceMsg,
    APIDeleteHostMsg,
    APIReconnectHostMsg,
    APIUpdateHostMsg,
)
from .checks import check_description, check_name
from .configs import BOOT_DEVICES, BOOT_ORDER, HOST_CONNECT_TIMEOUT
from .errors import ClusterErrors, HostErrors, VmErrors, ZoneErrors
from .host import host_uri
from .libvirt_host import open_probe, parse_uri
from .models import ClusterVO, HostVO, InstanceOfferingVO, ZoneVO
from .offering import check_vm_size
from zstack_core.prepared import Prepared

__all__ = ["HostApiInterceptor", "KVMApiInterceptor", "VmApiInterceptor"]


class HostApiInterceptor(ApiInterceptor):
    """Host APIs: the host (or, to add one, the cluster) exists; names are valid."""

    name = "HostApiInterceptor"
    order = 100
    messages = (APIAddKVMHostMsg, APIUpdateHostMsg, APIChangeHostStateMsg, APIReconnectHostMsg, APIDeleteHostMsg)

    async def intercept(self, msg: APIMessage, node: Any) -> APIMessage:
        if isinstance(msg, APIAddKVMHostMsg):
            check_name(msg.name)
            cluster = await node.db.run(lambda: ClusterVO.get_or_none(ClusterVO.uuid == msg.cluster_uuid))
            if cluster is None:
                raise HostErrors.exc("1003", f"no cluster {msg.cluster_uuid}", field="clusterUuid")
            if cluster.hypervisor_type != "KVM":
                raise HostErrors.exc("1000", f"cluster {cluster.uuid} is a {cluster.hypervisor_type} cluster, not KVM",
                                     field="clusterUuid")
            return msg
        uuid = getattr(msg, "uuid")
        if await node.db.run(lambda: HostVO.get_or_none(HostVO.uuid == uuid)) is None:
            raise HostErrors.exc("1007", f"no host {uuid}", field="uuid")
        if isinstance(msg, APIUpdateHostMsg) and msg.name is not None:
            check_name(msg.name)
        return msg


class KVMApiInterceptor(ApiInterceptor):
    """``AddKVMHost``: the libvirt URI is well formed, no host has it yet, and it answers
    (opened off the loop with ``kvm/host.connectTimeout``; refused with ``HOST.1005``)."""

    name = "KVMApiInterceptor"
    order = 110
    messages = (APIAddKVMHostMsg,)

    async def intercept(self, msg: APIMessage, node: Any) -> APIMessage:
        assert isinstance(msg, APIAddKVMHostMsg)
        uri = parse_uri(host_uri(msg)).uri
        if await node.db.run(lambda: HostVO.select().where(HostVO.management_url == uri).exists()):
            raise HostErrors.exc("1002", f"a host with URI {uri} already exists", field="url")
        await open_probe(uri, node.configs.get(HOST_CONNECT_TIMEOUT.category, HOST_CONNECT_TIMEOUT.name))
        return msg


def _needs_service(node: Any, resource: str, field: str, value: Any, plugin: str) -> None:
    if resource not in node.query.resources:
        raise VmErrors.exc("1006", f"{field} was given but no installed plugin provides {resource} resources "
                                   f"(install {plugin})", field=field)


async def _missing(node: Any, wanted: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of ``(resource, uuid)`` name no row, in one database round trip. Only existence is
    asked (no query engine, no inventories): the flows read what they need later."""
    wanted = [(r, u) for r, u in wanted if r in node.query.resources]
    if not wanted:
        return set()

    def missing() -> set[tuple[str, str]]:
        out = set()
        for resource, uuid in wanted:
            model = node.query.resources[resource].model
            prepared = _EXISTS.get(model)
            if prepared is None:
                key = model._meta.fields["uuid"]
                prepared = _EXISTS[model] = Prepared(lambda p, key=key, model=model: model.select(key).where(key == p.uuid))
            if prepared.run(uuid=uuid).fetchone() is None:
                out.add((resource, uuid))
        return out

    return await node.db.run(missing)  # type: ignore[no-any-return]


_EXISTS: dict[type[Any], Prepared] = {}
"""Per model: its UUID column of one row, compiled once (every create asks)."""


def _must_exist(missing: set[tuple[str, str]], resource: str, uuid: str, field: str) -> None:
    if (resource, uuid) in missing:
        raise invalid_argument(f"no {resource} {uuid}", f"$.{field}")


class VmApiInterceptor(ApiInterceptor):
    """Checks ``CreateVmInstance`` before a job exists: sizes, placement, and that the image,
    networks and disk offerings it names exist (and that a plugin serves them at all)."""

    name = "VmApiInterceptor"
    messages = (APICreateVmInstanceMsg,)

    async def intercept(self, msg: APICreateVmInstanceMsg, node: Any) -> APICreateVmInstanceMsg:  # type: ignore[override]
        check_name(msg.name)
        check_description(msg.description)
        if msg.strategy not in ("InstantStart", "CreateStopped"):
            raise invalid_argument(f"strategy must be InstantStart or CreateStopped, got {msg.strategy!r}", "$.strategy")
        db = node.db
        # Every existence check in one round trip; errors are still raised in the order below.
        wanted = [("Image", msg.image_uuid)] if msg.image_uuid is not None else []
        wanted += [("L3Network", u) for u in msg.l3_network_uuids]
        wanted += [("DiskOffering", u) for u in msg.data_disk_offering_uuids]
        missing = await _missing(node, wanted)
        if msg.instance_offering_uuid is not None:
            if msg.cpu_num is not None or msg.memory_size is not None:
                raise invalid_argument("give either instanceOfferingUuid or cpuNum and memorySize, not both",
                                       "$.instanceOfferingUuid")
            offering = await db.run(lambda: InstanceOfferingVO.get_or_none(
                InstanceOfferingVO.uuid == msg.instance_offering_uuid))
            if offering is None:
                raise VmErrors.exc("1003", f"no instance offering {msg.instance_offering_uuid}",
                                   field="instanceOfferingUuid")
            if offering.state != "Enabled":
                raise VmErrors.exc("1000", f"instance offering {offering.uuid} is {offering.state}",
                                   field="instanceOfferingUuid")
        else:
            if msg.cpu_num is None and msg.memory_size is None:
                raise invalid_argument("instanceOfferingUuid, or cpuNum and memorySize, is required",
                                       "$.instanceOfferingUuid")
            check_vm_size(msg.cpu_num, msg.memory_size)
        await self._placement(msg, db)
        if msg.image_uuid is not None:
            _needs_service(node, "Image", "imageUuid", msg.image_uuid, "zstack-storage")
            _must_exist(missing, "Image", msg.image_uuid, "imageUuid")
        if msg.root_disk_size is not None:
            if msg.root_disk_size <= 0:
                raise invalid_argument(f"rootDiskSize must be positive, got {msg.root_disk_size}", "$.rootDiskSize")
            _needs_service(node, "Volume", "rootDiskSize", msg.root_disk_size, "zstack-storage")
        if len(set(msg.l3_network_uuids)) != len(msg.l3_network_uuids):
            raise invalid_argument("l3NetworkUuids lists a network twice", "$.l3NetworkUuids")
        for i, l3 in enumerate(msg.l3_network_uuids):
            _needs_service(node, "L3Network", "l3NetworkUuids", l3, "zstack-network")
            _must_exist(missing, "L3Network", l3, f"l3NetworkUuids[{i}]")
        for i, offering_uuid in enumerate(msg.data_disk_offering_uuids):
            _needs_service(node, "DiskOffering", "dataDiskOfferingUuids", offering_uuid, "zstack-storage")
            _must_exist(missing, "DiskOffering", offering_uuid, f"dataDiskOfferingUuids[{i}]")
        for i, size in enumerate(msg.data_disk_sizes):
            if size <= 0:
                raise invalid_argument(f"dataDiskSizes[{i}] must be positive, got {size}", f"$.dataDiskSizes[{i}]")
            _needs_service(node, "Volume", "dataDiskSizes", size, "zstack-storage")
        for i, tag in enumerate(msg.system_tags):
            tokens = BOOT_ORDER.tokens(tag)
            if tokens is not None:
                devices = tokens["order"].split(",")
                if not devices or any(d not in BOOT_DEVICES for d in devices):
                    raise invalid_argument(f"bootOrder lists devices from {', '.join(BOOT_DEVICES)}, got "
                                           f"{tokens['order']!r}", f"$.systemTags[{i}]")
        return msg

    @staticmethod
    async def _placement(msg: APICreateVmInstanceMsg, db: Any) -> None:
        zone_uuid, cluster_uuid = msg.zone_uuid, msg.cluster_uuid
        if msg.host_uuid is not None:
            host = await db.run(lambda: HostVO.get_or_none(HostVO.uuid == msg.host_uuid))
            if host is None:
                raise HostErrors.exc("1007", f"no host {msg.host_uuid}", field="hostUuid")
            if cluster_uuid is not None and host.cluster_uuid != cluster_uuid:
                raise invalid_argument(f"host {host.uuid} is not in cluster {cluster_uuid}", "$.hostUuid")
            if zone_uuid is not None and host.zone_uuid != zone_uuid:
                raise invalid_argument(f"host {host.uuid} is not in zone {zone_uuid}", "$.hostUuid")
        if cluster_uuid is not None:
            cluster = await db.run(lambda: ClusterVO.get_or_none(ClusterVO.uuid == cluster_uuid))
            if cluster is None:
                raise ClusterErrors.exc("1000", f"no cluster {cluster_uuid}", field="clusterUuid")
            if zone_uuid is not None and cluster.zone_uuid != zone_uuid:
                raise invalid_argument(f"cluster {cluster_uuid} is not in zone {zone_uuid}", "$.clusterUuid")
        if zone_uuid is not None:
            if await db.run(lambda: ZoneVO.get_or_none(ZoneVO.uuid == zone_uuid)) is None:
                raise ZoneErrors.exc("1000", f"no zone {zone_uuid}", field="zoneUuid")
