"""Per-account VM quotas: how many VMs an account may have, and the checks that enforce it.

An account's limit is its ``quota::vm::{num}`` system tag if it has one, else the global config
``quota/vm.num``. ``CreateVmInstance`` from a ``Normal`` account is refused with ``QUOTA.1000``
when the account already has that many VMs (destroyed VMs do not count). The admin account,
and programs calling in-process without a session, are not limited, as in ZStack.

The check runs twice, for two reasons. The global API interceptor refuses early, before anything
has happened. ``zstack_vm_create_check`` checks again just before compute records the VM, and
holds the VM's place until its create ends: checks of one account run one at a time (a task
queue, not a lock), so two creates racing for the last place cannot both pass.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from zstack_core import (
    APIMessage,
    APIReply,
    ApiInterceptor,
    ErrorCodeSpace,
    ManagementNode,
    Service,
    SysErrors,
    handles,
)
from zstack_core.db import utcnow
from zstack_core.globalconfig import GlobalConfig, Range
from zstack_core.header import VmInstanceInventory, VmInstanceSpec
from zstack_core.identity import AccountVO
from zstack_core.ownership import ADMIN_ACCOUNT_UUID, AccountResourceRefVO, owner_of_sync
from zstack_core.tags import PatternedSystemTag

from .models import QuotaUsageInventory, QuotaUsageVO

QuotaErrors = ErrorCodeSpace(
    prefix="QUOTA",
    codes={
        "1000": "quota exceeded",
        "1001": "invalid quota",
        "1002": "only the admin account may set quotas",
    },
)

VM_NUM = GlobalConfig(category="quota", name="vm.num", type="int", default=20, validators=[Range(min=0)],
                      description="VMs a Normal account may have, unless its quota::vm::{num} tag says otherwise")

QUOTA_VM_NUM = PatternedSystemTag(pattern="quota::vm::{num}", resource_type="Account",
                                  description="this account's VM quota, overriding quota/vm.num")

HOLD_TTL = 600.0
"""Seconds a VM's place is held at most: its create ends (and releases it) long before, unless
another plugin vetoed the create after this one checked it."""

_NOT_COUNTED = ("Destroyed",)
"""States of VMs that do not count against the quota."""


@attrs.define(kw_only=True)
class APIGetQuotaUsageMsg(APIMessage):
    """An account's VM quota and usage. A Normal account may ask only about itself."""

    SERVICE_ID = "quota"
    uuid: str | None = attrs.field(default=None, metadata={"resource": False})
    """The account's UUID; default: the caller's. (Checked here: an account is not a resource
    its user owns, so the ownership interceptor must not judge this field.)"""


@attrs.define(kw_only=True)
class QuotaUsage:
    account_uuid: str
    vm_num_limit: int
    vm_num: int
    peak_vm_num: int


@attrs.define(kw_only=True)
class APIGetQuotaUsageReply(APIReply):
    usage: QuotaUsage | None = None


def _owned_vm_uuids_sync(account_uuid: str) -> list[str]:
    rows = AccountResourceRefVO.select(AccountResourceRefVO.resource_uuid).where(
        (AccountResourceRefVO.account_uuid == account_uuid) & (AccountResourceRefVO.resource_type == "VmInstance"))
    return [r.resource_uuid for r in rows]


class QuotaService(Service):
    """Checks VM creates against quotas; keeps each account's usage record."""

    id = "quota"

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, dict[str, float]] = {}
        """account -> {uuid of a VM being created: when its hold expires}."""

    async def vm_num_limit(self, account_uuid: str) -> int:
        tokens = await self.node.tags.tokens(account_uuid, QUOTA_VM_NUM)
        if tokens is not None:
            return int(tokens["num"])  # validated when the tag was created
        return int(self.node.configs.get(VM_NUM.category, VM_NUM.name))

    async def vms_of(self, account_uuid: str) -> set[str]:
        """UUIDs of the account's VMs that count against its quota."""
        uuids = await self.node.db.run(_owned_vm_uuids_sync, account_uuid)
        if not uuids:
            return set()
        vms = await self.node.query.find("VmInstance", [("uuid", "in", uuids), ("state", "not in", list(_NOT_COUNTED))])
        return {vm.uuid for vm in vms}

    async def check(self, account_uuid: str, hold: str | None = None) -> None:
        """Refuse (``QUOTA.1000``) a new VM of an account at its quota; with ``hold`` (the new
        VM's UUID), keep its place until :meth:`release`."""

        async def check() -> None:
            now = time.monotonic()
            held = {vm: t for vm, t in self.held.get(account_uuid, {}).items() if t > now}
            limit = await self.vm_num_limit(account_uuid)
            # A VM being created may already be recorded: count it once.
            used = len(await self.vms_of(account_uuid) | set(held))
            if used >= limit:
                raise QuotaErrors.exc("1000", f"account {account_uuid} has {used} VMs and its quota is {limit}: "
                                              f"delete a VM or ask the admin for a higher quota::vm::{{num}}",
                                      limit=limit, used=used)
            if hold is not None:
                held[hold] = now + HOLD_TTL
            self.held[account_uuid] = held

        await self.node.tasks.run(f"quota-{account_uuid}", check)

    def release(self, spec: VmInstanceSpec) -> None:
        """The create of ``spec`` ended, on its host or rolled back: its VM counts as itself."""
        self.held.get(spec.account_uuid or "", {}).pop(spec.vm.uuid, None)

    async def is_limited(self, account_uuid: str) -> bool:
        """Quotas apply to Normal accounts only."""
        if account_uuid == ADMIN_ACCOUNT_UUID:
            return False
        row = await self.node.db.run(lambda: AccountVO.get_or_none(AccountVO.uuid == account_uuid))
        return row is not None and row.type == "Normal"

    async def record_usage(self, vm: VmInstanceInventory) -> None:
        """Refresh the usage record of ``vm``'s owner (after any state change of ``vm``)."""
        owner = await self.node.db.run(owner_of_sync, vm.uuid)
        if owner is None:  # expunged: it no longer belongs to anyone, and was not counted
            return

        async def refresh() -> None:
            used = len(await self.vms_of(owner))

            def save() -> None:
                row = QuotaUsageVO.get_or_none(QuotaUsageVO.account_uuid == owner)
                if row is None:
                    QuotaUsageVO.create(account_uuid=owner, vm_num=used, peak_vm_num=used)
                else:
                    row.vm_num, row.peak_vm_num, row.updated_at = used, max(row.peak_vm_num, used), utcnow()
                    row.save()

            await self.node.db.atomic(save)

        # One refresh of an account at a time: two VM events must not both insert its row.
        await self.node.tasks.run(f"quota-usage-{owner}", refresh)

    @handles(APIGetQuotaUsageMsg)
    async def get_usage(self, msg: APIGetQuotaUsageMsg) -> APIGetQuotaUsageReply:
        caller = msg.account_uuid or ADMIN_ACCOUNT_UUID
        account = msg.uuid or caller
        if msg.headers.get("account_type") == "Normal" and account != caller:
            raise SysErrors.exc("1012", "a Normal account may see only its own quota")
        row = await self.node.db.run(lambda: QuotaUsageVO.get_or_none(QuotaUsageVO.account_uuid == account))
        usage: QuotaUsageInventory | None = row.to_inventory() if row else None
        return APIGetQuotaUsageReply(usage=QuotaUsage(
            account_uuid=account, vm_num_limit=await self.vm_num_limit(account),
            vm_num=usage.vm_num if usage else 0, peak_vm_num=usage.peak_vm_num if usage else 0))


class QuotaInterceptor(ApiInterceptor):
    """A global interceptor: checks ``CreateVmInstance`` against the caller's quota, and
    ``CreateSystemTag`` of a quota tag (admin only, a whole number)."""

    name = "QuotaInterceptor"
    order = 500  # after the session and ownership interceptors: the caller is known

    def applies_to(self, msg: APIMessage) -> bool:
        # By API name: this plugin depends on no service's code.
        return msg.api_name() in ("CreateVmInstance", "CreateSystemTag")

    async def intercept(self, msg: APIMessage, node: ManagementNode) -> APIMessage:
        normal = msg.headers.get("account_type") == "Normal"
        if msg.api_name() == "CreateSystemTag":
            tag: str = getattr(msg, "tag")
            tokens = QUOTA_VM_NUM.tokens(tag)
            if tokens is not None:
                if normal:
                    raise QuotaErrors.exc("1002", f"{tag!r} can be set by the admin account only")
                if not tokens["num"].isdigit():
                    raise QuotaErrors.exc("1001", f"{tag!r}: the VM quota must be a whole number >= 0")
            return msg
        if normal and msg.account_uuid is not None:
            await quota_service(node).check(msg.account_uuid)
        return msg


def quota_service(node: Any) -> QuotaService:
    service = node.services[QuotaService.id]
    assert isinstance(service, QuotaService)
    return service
