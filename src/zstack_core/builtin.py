"""The kernel's own plugin: global-config, system-tag and query APIs, and the core schema.

Registered first on every node, under the name ``zstack_core``; it uses the same hooks as any
other plugin, so the kernel's APIs are built exactly as a service's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from .api import ApiInterceptor, ApiRegistration
from .db import ModelRegistration
from . import check, identity
from .errors import ErrorCodeSpace, ZStackError, invalid_argument
from .globalconfig import GlobalConfig
from .properties import GlobalProperty
from .globalconfig import GlobalConfigInventory, GlobalConfigVO, ResourceConfigVO
from .hookspecs import hookimpl
from .jobs import ApiJobVO
from .messages import APIEvent, APIMessage, APIReply
from .ownership import AccountResourceRefVO, disown_sync, own_sync
from .query import APIQueryMessage, APIQueryReply, QueryableResource
from .service import Service, handles
from .tags import SystemTagInventory, SystemTagVO

NAME = "zstack_core"

# -- global configs ---------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APIUpdateGlobalConfigMsg(APIMessage):
    """Change a global config; the value is validated first and a refused one changes nothing."""

    SERVICE_ID = "globalconfig"
    category: str
    name: str
    value: Any


@attrs.define(kw_only=True)
class APIResetGlobalConfigMsg(APIMessage):
    """Put a global config back to its default."""

    SERVICE_ID = "globalconfig"
    category: str
    name: str


@attrs.define(kw_only=True)
class APIGlobalConfigEvent(APIEvent):
    inventory: GlobalConfigInventory | None = None


@attrs.define(kw_only=True)
class APIGetGlobalConfigOptionsMsg(APIMessage):
    """The type, default, valid values and overridable resource types of a global config."""

    SERVICE_ID = "globalconfig"
    category: str
    name: str


@attrs.define(kw_only=True)
class GlobalConfigOptions:
    category: str
    name: str
    type: str
    default_value: str
    description: str
    resource_types: list[str]
    validators: list[dict[str, Any]]


@attrs.define(kw_only=True)
class APIGetGlobalConfigOptionsReply(APIReply):
    options: GlobalConfigOptions | None = None


@attrs.define(kw_only=True)
class APIUpdateResourceConfigMsg(APIMessage):
    """Override a global config for one resource (host, cluster, zone...)."""

    SERVICE_ID = "globalconfig"
    category: str
    name: str
    resource_uuid: str
    value: Any


@attrs.define(kw_only=True)
class APIDeleteResourceConfigMsg(APIMessage):
    """Remove a resource's override; it reads the next level of the chain again."""

    SERVICE_ID = "globalconfig"
    category: str
    name: str
    resource_uuid: str


@attrs.define(kw_only=True)
class APIGetResourceConfigMsg(APIMessage):
    """The value of a config for a resource, following resource -> cluster -> zone -> global."""

    SERVICE_ID = "globalconfig"
    category: str
    name: str
    resource_uuid: str


@attrs.define(kw_only=True)
class ResourceConfigInventory:
    category: str
    name: str
    resource_uuid: str
    value: str
    source: str
    """``resource`` when set on this resource, else where the value came from."""


@attrs.define(kw_only=True)
class APIResourceConfigReply(APIReply):
    inventory: ResourceConfigInventory | None = None


class GlobalConfigService(Service):
    id = "globalconfig"
    start_order = 1

    def _inventory(self, category: str, name: str) -> GlobalConfigInventory:
        from .globalconfig import GlobalConfig

        cfg = self.node.configs.config(category, name)
        return GlobalConfigInventory(category=category, name=name,
                                     value=GlobalConfig.to_text(self.node.configs.get(category, name)),
                                     default_value=GlobalConfig.to_text(cfg.default), description=cfg.description)

    @handles(APIUpdateGlobalConfigMsg)
    async def update(self, msg: APIUpdateGlobalConfigMsg) -> APIGlobalConfigEvent:
        await self.node.configs.update(msg.category, msg.name, msg.value)
        return APIGlobalConfigEvent(inventory=self._inventory(msg.category, msg.name))

    @handles(APIResetGlobalConfigMsg)
    async def reset(self, msg: APIResetGlobalConfigMsg) -> APIGlobalConfigEvent:
        await self.node.configs.reset(msg.category, msg.name)
        return APIGlobalConfigEvent(inventory=self._inventory(msg.category, msg.name))

    @handles(APIGetGlobalConfigOptionsMsg)
    async def options(self, msg: APIGetGlobalConfigOptionsMsg) -> APIGetGlobalConfigOptionsReply:
        from .globalconfig import GlobalConfig

        cfg = self.node.configs.config(msg.category, msg.name)
        return APIGetGlobalConfigOptionsReply(options=GlobalConfigOptions(
            category=cfg.category, name=cfg.name, type=cfg.type, default_value=GlobalConfig.to_text(cfg.default),
            description=cfg.description, resource_types=list(cfg.resource_types),
            validators=[{"type": type(v).__name__, **v.describe()} for v in cfg.validators]))

    async def _resource_type(self, resource_uuid: str) -> str:
        resource_type = await self.node.resource_type_of(resource_uuid)
        if resource_type is None:
            raise invalid_argument(f"no resource {resource_uuid}", "resourceUuid")
        return resource_type

    @handles(APIUpdateResourceConfigMsg)
    async def update_resource(self, msg: APIUpdateResourceConfigMsg) -> APIResourceConfigReply:
        resource_type = await self._resource_type(msg.resource_uuid)
        await self.node.configs.update_resource(msg.category, msg.name, msg.resource_uuid, resource_type, msg.value)
        return await self.get_resource(APIGetResourceConfigMsg(category=msg.category, name=msg.name,
                                                               resource_uuid=msg.resource_uuid))

    @handles(APIDeleteResourceConfigMsg)
    async def delete_resource(self, msg: APIDeleteResourceConfigMsg) -> APIResourceConfigReply:
        await self.node.configs.delete_resource(msg.category, msg.name, msg.resource_uuid)
        return await self.get_resource(APIGetResourceConfigMsg(category=msg.category, name=msg.name,
                                                               resource_uuid=msg.resource_uuid))

    @handles(APIGetResourceConfigMsg)
    async def get_resource(self, msg: APIGetResourceConfigMsg) -> APIResourceConfigReply:
        from .globalconfig import GlobalConfig

        configs = self.node.configs
        configs.config(msg.category, msg.name)
        await self._resource_type(msg.resource_uuid)  # an unknown UUID is an error, not "global"
        chain = await self.node.config_chain(msg.resource_uuid)
        source, value = "global", configs.get(msg.category, msg.name)
        for i, uuid in enumerate(chain):
            override = configs.resource_value(msg.category, msg.name, uuid)
            if override is not None:
                source = "resource" if i == 0 else uuid
                value = override
                break
        return APIResourceConfigReply(inventory=ResourceConfigInventory(
            category=msg.category, name=msg.name, resource_uuid=msg.resource_uuid,
            value=GlobalConfig.to_text(value), source=source))


# -- system tags ------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICreateSystemTagMsg(APIMessage):
    """Attach a system tag to a resource; it must match a pattern declared for the resource's type."""

    SERVICE_ID = "tag"
    resource_uuid: str
    tag: str


@attrs.define(kw_only=True)
class APIDeleteSystemTagMsg(APIMessage):
    SERVICE_ID = "tag"
    uuid: str


@attrs.define(kw_only=True)
class APISystemTagEvent(APIEvent):
    inventory: SystemTagInventory | None = None


class SystemTagService(Service):
    id = "tag"
    start_order = 2

    @handles(APICreateSystemTagMsg)
    async def create(self, msg: APICreateSystemTagMsg) -> APISystemTagEvent:
        resource_type = await self.node.resource_type_of(msg.resource_uuid)
        if resource_type is None:
            raise invalid_argument(f"no resource {msg.resource_uuid}", "resourceUuid")
        await self.node.tags.create(msg.resource_uuid, resource_type, [msg.tag])

        def own() -> SystemTagVO:
            row = SystemTagVO.get((SystemTagVO.resource_uuid == msg.resource_uuid) & (SystemTagVO.tag == msg.tag))
            own_sync(row.uuid, "SystemTag", msg.account_uuid)
            return row

        row = await self.node.db.run(own)
        return APISystemTagEvent(inventory=row.to_inventory())

    @handles(APIDeleteSystemTagMsg)
    async def delete(self, msg: APIDeleteSystemTagMsg) -> APIEvent:
        def delete() -> None:
            SystemTagVO.delete().where(SystemTagVO.uuid == msg.uuid).execute()
            disown_sync(msg.uuid)

        await self.node.db.atomic(delete)
        return APIEvent()


class SystemTagInterceptor(ApiInterceptor):
    """Refuses API calls carrying system tags that no plugin declared for the resource type."""

    name = "SystemTagInterceptor"
    order = 10

    async def intercept(self, msg: APIMessage, node: Any) -> APIMessage:
        if msg.system_tags:
            reg = node.api.registration_of(msg)
            node.tags.validate(msg.system_tags, reg.resource)
        return msg


# -- query ------------------------------------------------------------------------------------


class QueryService(Service):
    id = "query"
    start_order = 3

    @handles(APIQueryMessage)
    async def query(self, msg: APIQueryMessage) -> APIQueryReply:
        return await self.node.query.query(msg)


# -- hooks ------------------------------------------------------------------------------------


@hookimpl
def zstack_models() -> Sequence[ModelRegistration]:
    return [ModelRegistration(name=NAME, models=[GlobalConfigVO, ResourceConfigVO, SystemTagVO, ApiJobVO, AccountResourceRefVO]),
            identity.MODELS]


@hookimpl
def zstack_services(node: Any) -> Sequence[Service]:
    return [GlobalConfigService(), SystemTagService(), QueryService(), identity.IdentityService(),
            check.ConsistencyService()]


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    return [
        ApiRegistration(message=APIUpdateGlobalConfigMsg, route=("PUT", "/v1/global-configurations/{category}/{name}/actions"),
                        admin_only=True),
        ApiRegistration(message=APIResetGlobalConfigMsg, route=("PUT", "/v1/global-configurations/{category}/{name}/actions"),
                        admin_only=True),
        ApiRegistration(message=APIGetGlobalConfigOptionsMsg, route=("GET", "/v1/global-configurations/{category}/{name}/options")),
        ApiRegistration(message=APIUpdateResourceConfigMsg, route=("PUT", "/v1/resource-configurations/{category}/{name}/{resourceUuid}"),
                        admin_only=True),
        ApiRegistration(message=APIDeleteResourceConfigMsg, route=("DELETE", "/v1/resource-configurations/{category}/{name}/{resourceUuid}"),
                        admin_only=True),
        ApiRegistration(message=APIGetResourceConfigMsg, route=("GET", "/v1/resource-configurations/{category}/{name}/{resourceUuid}")),
        ApiRegistration(message=APICreateSystemTagMsg, route=("POST", "/v1/system-tags")),
        ApiRegistration(message=APIDeleteSystemTagMsg, route=("DELETE", "/v1/system-tags/{uuid}")),
        *identity.api_registrations(),
        *check.api_registrations(),
    ]


@hookimpl
def zstack_api_interceptors() -> Sequence[ApiInterceptor]:
    return [*identity.INTERCEPTORS, SystemTagInterceptor()]


@hookimpl
def zstack_queryable_resources() -> Sequence[QueryableResource]:
    return [
        QueryableResource(name="GlobalConfig", model=GlobalConfigVO, inventory=GlobalConfigInventory),
        QueryableResource(name="SystemTag", model=SystemTagVO, inventory=SystemTagInventory),
        *identity.QUERYABLE,
    ]


@hookimpl
def zstack_global_configs() -> Sequence[GlobalConfig]:
    return list(identity.GLOBAL_CONFIGS)


@hookimpl
def zstack_global_properties() -> Sequence[GlobalProperty]:
    return list(identity.GLOBAL_PROPERTIES)


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [identity.IdentityErrors]


__all__ = ["ZStackError"]
