"""zstack-core: the kernel of a ZStack-style management node, and the contracts services share.

The public API is exported here; services and plugins import from ``zstack_core`` (and from
``zstack_core.header`` for the types they share with other services), never from each other.
"""

from importlib.metadata import PackageNotFoundError, version

from .api import ApiInterceptor, ApiRegistration
from .bus import CloudBus
from .errors import ErrorCode, ErrorCodeSpace, SysErrors, ZStackError, err, invalid_argument, operr
from .flow import Flow, FlowChain, FlowContribution, FlowError, NoRollbackFlow
from .hookspecs import hookimpl
from .mediator import ApiJob
from .messages import APIEvent, APIMessage, APIReply, Event, Message, MessageReply, NeedReplyMessage
from .node import ManagementNode, NodeStartError, SyncManagementNode
from .plugins import PluginError
from .properties import ConfigError, GlobalProperty
from .serialize import structure, unstructure
from .service import Service, handles
from .taskqueue import TaskQueues

try:
    __version__ = version("zstack-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "APIEvent",
    "APIMessage",
    "APIReply",
    "ApiInterceptor",
    "ApiJob",
    "ApiRegistration",
    "CloudBus",
    "ConfigError",
    "ErrorCode",
    "ErrorCodeSpace",
    "Event",
    "Flow",
    "FlowChain",
    "FlowContribution",
    "FlowError",
    "GlobalProperty",
    "ManagementNode",
    "Message",
    "MessageReply",
    "NeedReplyMessage",
    "NoRollbackFlow",
    "NodeStartError",
    "PluginError",
    "Service",
    "SyncManagementNode",
    "SysErrors",
    "TaskQueues",
    "ZStackError",
    "err",
    "handles",
    "hookimpl",
    "invalid_argument",
    "operr",
    "structure",
    "unstructure",
]
