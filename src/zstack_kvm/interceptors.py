"""The seed's interceptors of ``APIAddKVMHostMsg``: ``HostApiInterceptor``, then
``KVMApiInterceptor``.

Both are global interceptors (``zstack_api_interceptors``), ordered by ``order``: the kernel
runs global interceptors before per-message ones, and the seed needs ``HostApiInterceptor`` (the
cheap checks of any host API) to run first and ``KVMApiInterceptor`` (which opens a libvirt
connection) only for messages that got past it.
"""

from __future__ import annotations

from typing import Any

from zstack_core import APIMessage, ApiInterceptor

from .api import APIAddKVMHostMsg, APIChangeHostStateMsg, APIDeleteHostMsg, APIReconnectHostMsg, APIUpdateHostMsg
from .checks import check_name
from .configs import HOST_CONNECT_TIMEOUT
from .errors import HostErrors
from .host import host_uri
from .libvirt_host import open_probe, parse_uri
from .models import ClusterVO, HostVO

__all__ = ["HostApiInterceptor", "KVMApiInterceptor"]


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
