"""API registrations and interceptors (ZStack's ``ApiMediator`` and ``ApiMessageInterceptor``).

Plugins register their API messages with :class:`ApiRegistration` and may add
:class:`ApiInterceptor` objects: global ones (from ``zstack_api_interceptors``, ordered by
``order``), per-service ones (``Service.interceptors``) and per-message ones
(``ApiRegistration.interceptors``, as the seed's ``<message><interceptor>`` list). Each runs
before the service sees the message and may refuse it by raising ``ZStackError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .messages import APIMessage

if TYPE_CHECKING:
    from .node import ManagementNode

__all__ = ["ApiInterceptor", "ApiRegistration"]


class ApiInterceptor:
    """Checks (and may amend) an API message before its service handles it.

    ``order`` places global interceptors (lower first); ``messages`` limits which message types
    it sees (empty: all). ``intercept`` returns the message to pass on (usually the same one) or
    raises ``ZStackError`` to refuse it; a refusal changes nothing.
    """

    name: str = ""
    order: int = 100
    messages: tuple[type[APIMessage], ...] = ()

    def applies_to(self, msg: APIMessage) -> bool:
        return not self.messages or isinstance(msg, self.messages)

    async def intercept(self, msg: APIMessage, node: ManagementNode) -> APIMessage:
        return msg

    @property
    def interceptor_name(self) -> str:
        return self.name or type(self).__name__


@attrs.frozen(kw_only=True)
class ApiRegistration:
    """An API message a plugin provides, with the service that handles it.

    ``service`` defaults to the message class's ``SERVICE_ID``. ``route`` is the REST route
    (``("POST", "/v1/zones")``) used by the HTTP API; ``resource`` is the inventory name the API
    acts on, used for ownership checks and query routes. ``admin_only`` APIs are refused to
    ``Normal`` accounts (ZStack's admin-only actions: zones, hosts, global configs...).
    """

    message: type[APIMessage]
    service: str = ""
    interceptors: Sequence[ApiInterceptor] = ()
    route: tuple[str, str] | None = None
    resource: str | None = None
    reply: type[Any] | None = None
    admin_only: bool = False

    @property
    def name(self) -> str:
        return self.message.api_name()

    @property
    def service_id(self) -> str:
        return self.service or self.message.SERVICE_ID
