"""The REST route table, built from every ``ApiRegistration.route`` of the installed plugins.

No route is written by hand per API. Several APIs may share one path and method (ZStack's
``PUT /v1/vm-instances/{uuid}/actions`` carries ``startVmInstance``, ``stopVmInstance``...): the
body's action key, the API name in lowerCamel, says which one is meant.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from ..query import APIQueryMessage

if TYPE_CHECKING:
    from ..api import ApiRegistration
    from ..node import ManagementNode

__all__ = ["ApiRoute", "RouteTable", "action_key"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
METHODS = ("GET", "POST", "PUT", "DELETE")


def template(path: str) -> str:
    """``/v1/vm-instances/{uuid}/actions`` and ``/v1/vm-instances/{vmInstanceUuid}/actions`` are
    one URL pattern: placeholders are named by position (``{p0}``) in the served route."""
    counter = iter(range(1000))
    return _PLACEHOLDER.sub(lambda _: "{p%d}" % next(counter), path)


def action_key(api_name: str) -> str:
    """``StartVmInstance`` -> ``startVmInstance``: the body key of an action API."""
    return api_name[:1].lower() + api_name[1:]


@attrs.frozen(kw_only=True)
class ApiRoute:
    """One API as the HTTP layer serves it."""

    name: str
    method: str
    path: str
    registration: ApiRegistration = attrs.field(eq=False, repr=False)

    @property
    def message(self) -> type[Any]:
        return self.registration.message

    @property
    def long_running(self) -> bool:
        return bool(self.message.LONG_RUNNING)

    @property
    def is_query(self) -> bool:
        return issubclass(self.message, APIQueryMessage)

    @property
    def action_key(self) -> str:
        return action_key(self.name)

    @property
    def placeholders(self) -> list[str]:
        return _PLACEHOLDER.findall(self.path)


class RouteTable:
    """``template -> method -> [ApiRoute]`` for every registered API that declares a route; APIs
    whose paths differ only in placeholder names share a template."""

    def __init__(self, node: ManagementNode) -> None:
        self.paths: dict[str, dict[str, list[ApiRoute]]] = {}
        self.by_name: dict[str, ApiRoute] = {}
        self.unrouted: list[str] = []
        for name, reg in sorted(node.api.registrations.items()):
            if reg.route is None:
                self.unrouted.append(name)
                continue
            method, path = reg.route[0].upper(), reg.route[1]
            if method not in METHODS:
                raise ValueError(f"API {name}: unsupported HTTP method {reg.route[0]!r}")
            if not path.startswith("/"):
                raise ValueError(f"API {name}: route path {path!r} must start with '/'")
            route = ApiRoute(name=name, method=method, path=path, registration=reg)
            self.paths.setdefault(template(path), {}).setdefault(method, []).append(route)
            self.by_name[name] = route

    def ordered_paths(self) -> list[str]:
        """Paths with literal segments before placeholders, so ``/v1/hosts/kvm`` is matched
        before ``/v1/hosts/{uuid}``."""

        def key(path: str) -> tuple[Any, ...]:
            return tuple((1 if seg.startswith("{") else 0, seg) for seg in path.strip("/").split("/"))

        return sorted(self.paths, key=key)
