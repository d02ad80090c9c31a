"""Hook implementations of zstack-quota: what it registers, and the VM events it listens to.

The node finds this module through the ``zstack.plugins`` entry point ``quota``. Extension
points carry no ``node`` argument; :func:`zstack_core.plugins.current_node` is the node whose
hook is running.
"""

from __future__ import annotations

from collections.abc import Sequence

from zstack_core import ApiInterceptor, ApiRegistration, ErrorCodeSpace, ManagementNode, Service, hookimpl
from zstack_core.db import ModelRegistration
from zstack_core.globalconfig import GlobalConfig
from zstack_core.header import VmInstanceInventory, VmInstanceSpec
from zstack_core.plugins import current_node
from zstack_core.tags import PatternedSystemTag

from .models import SCHEMA
from .quota import (
    QUOTA_VM_NUM,
    VM_NUM,
    APIGetQuotaUsageMsg,
    QuotaErrors,
    QuotaInterceptor,
    QuotaService,
    quota_service,
)

# -- registration: asked once while the node starts --------------------------------------------


@hookimpl
def zstack_error_codes() -> Sequence[ErrorCodeSpace]:
    return [QuotaErrors]


@hookimpl
def zstack_global_configs() -> Sequence[GlobalConfig]:
    return [VM_NUM]


@hookimpl
def zstack_system_tags() -> Sequence[PatternedSystemTag]:
    return [QUOTA_VM_NUM]


@hookimpl
def zstack_models() -> Sequence[ModelRegistration]:
    return [SCHEMA]


@hookimpl
def zstack_services(node: ManagementNode) -> Sequence[Service]:
    return [QuotaService()]


@hookimpl
def zstack_api_messages() -> Sequence[ApiRegistration]:
    return [ApiRegistration(message=APIGetQuotaUsageMsg, route=("GET", "/v1/quotas/vm-usage"), resource="Account")]


@hookimpl
def zstack_api_interceptors() -> Sequence[ApiInterceptor]:
    return [QuotaInterceptor()]


# -- extension points: VM creation and VM events ---------------------------------------------


@hookimpl
async def zstack_vm_create_check(spec: VmInstanceSpec) -> None:
    service = quota_service(current_node())
    account = spec.account_uuid  # None: an in-process call, which acts as admin
    if account is not None and await service.is_limited(account):
        await service.check(account, hold=spec.vm.uuid)


@hookimpl
def zstack_vm_after_instantiate_resource(spec: VmInstanceSpec) -> None:
    quota_service(current_node()).release(spec)


@hookimpl
def zstack_vm_release_resource(spec: VmInstanceSpec, reason: str) -> None:
    if reason == "rollback":
        quota_service(current_node()).release(spec)


@hookimpl
async def zstack_vm_state_changed(vm: VmInstanceInventory, old_state: str, new_state: str) -> None:
    await quota_service(current_node()).record_usage(vm)
