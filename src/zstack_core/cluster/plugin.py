"""The cluster layer as a plugin of the kernel: its schema, configs, properties, error codes,
the ``QueryManagementNode`` API, and the listener that tells peers about config changes.

Registered by every node right after the kernel's own plugin, under the name
``zstack_core.cluster``; it is an object bound to its node, so several nodes in one process
each tell their own peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ErrorCodeSpace
from ..globalconfig import GlobalConfig, Range
from ..hookspecs import hookimpl
from ..db import ModelRegistration
from ..properties import GlobalProperty
from ..query import QueryableResource
from .errors import ClusterErrors
from .manager import CATEGORY
from .models import MODELS, ManagementNodeInventory, ManagementNodeVO

if TYPE_CHECKING:
    from ..node import ManagementNode

__all__ = ["GLOBAL_CONFIGS", "GLOBAL_PROPERTIES", "NAME", "ClusterPlugin"]

NAME = "zstack_core.cluster"

GLOBAL_CONFIGS = [
    GlobalConfig(category=CATEGORY, name="node.heartbeatInterval", type="float", default=5.0,
                 validators=[Range(min=0.05, max=3600)],
                 description="Seconds between two heartbeats of each management node."),
    GlobalConfig(category=CATEGORY, name="node.heartbeatMissedLimit", type="int", default=3,
                 validators=[Range(min=1, max=1000)],
                 description="Heartbeats a management node may miss before the others find it dead and "
                             "take over its resources."),
]

GLOBAL_PROPERTIES = [
    GlobalProperty(section="cluster", name="secret", default="",
                   description="secret signing node-to-node requests; the same on every node of a database. "
                               "Empty: the first node generates one and keeps it in the database"),
    GlobalProperty(section="cluster", name="advertise_host", default="",
                   description="address other nodes reach this node's HTTP API at (default: api.host, or "
                               "this machine's address when api.host is a wildcard)"),
    GlobalProperty(section="cluster", name="node_uuid", default="",
                   description="this node's UUID; empty: kept in <data_dir>/node-uuid, made at first start"),
]


class ClusterPlugin:
    """Hook implementations of the cluster layer for one node."""

    def __init__(self, node: ManagementNode) -> None:
        self.node = node

    @hookimpl
    def zstack_models(self) -> Sequence[ModelRegistration]:
        return [MODELS]

    @hookimpl
    def zstack_global_configs(self) -> Sequence[GlobalConfig]:
        return GLOBAL_CONFIGS

    @hookimpl
    def zstack_global_properties(self) -> Sequence[GlobalProperty]:
        return GLOBAL_PROPERTIES

    @hookimpl
    def zstack_error_codes(self) -> Sequence[ErrorCodeSpace]:
        return [ClusterErrors]

    @hookimpl
    def zstack_queryable_resources(self) -> Sequence[QueryableResource]:
        return [QueryableResource(name="ManagementNode", model=ManagementNodeVO, inventory=ManagementNodeInventory)]

    @hookimpl
    def zstack_global_config_changed(self, category: str, name: str, old_value: Any, new_value: Any,
                                     resource_uuid: str | None) -> None:
        cluster = self.node.cluster
        if category == CATEGORY:
            cluster.wake()  # beat now, at the new interval
        cluster.config_changed()
