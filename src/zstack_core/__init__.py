"""zstack-core: the kernel of a ZStack-style management node, and the contracts services share.

The public API is exported here; services and plugins import from ``zstack_core`` (and from
``zstack_core.header`` for the types they share with other services), never from each other.
"""

import gc as _gc

from ._attrs_cache import install as _install_attrs_cache

# Start-up time (BENCHMARKS.md, start-up): importing the kernel creates hundreds of classes and
# their methods, which live as long as the process; the cyclic garbage collector would scan
# them again and again while they are made (10% of `zstack node start`). It is paused while
# the kernel is imported, and the methods attrs generates come from a bytecode cache.
# Afterwards freeze() + unfreeze() moves what the import made to the oldest generation at no
# cost: resumed with them all in the youngest, the collector would first scan them all at once
# (15-30 ms). They are still collected, by the next full collection.
_gc_was_enabled = _gc.isenabled()
_gc.disable()
_install_attrs_cache()

try:
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
finally:
    if _gc_was_enabled:
        _gc.freeze()
        _gc.unfreeze()
        _gc.enable()


def __getattr__(name: str) -> str:
    # ``__version__`` is looked up in the installed metadata when first asked for, not at
    # import (``zstack node start`` never needs it).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("zstack-core")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0.0.0"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
