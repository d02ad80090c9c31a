"""Several management nodes on one database: heartbeats, the consistent hash ring, forwarding.

``node.cluster`` is the node's :class:`Cluster`: ``owner_of(uuid)``, ``owns(uuid)``,
``members``, ``peers``. Messages sent with ``bus.call(msg, resource_uuid=...)`` and API messages
about a resource are handled by the resource's owner node; see :mod:`.manager`.
"""

from .errors import ClusterErrors
from .manager import CATEGORY, Cluster, Peer
from .models import ManagementNodeInventory, ManagementNodeVO
from .plugin import ClusterPlugin
from .ring import VIRTUAL_NODES, HashRing

__all__ = [
    "CATEGORY",
    "Cluster",
    "ClusterErrors",
    "ClusterPlugin",
    "HashRing",
    "ManagementNodeInventory",
    "ManagementNodeVO",
    "Peer",
    "VIRTUAL_NODES",
]
