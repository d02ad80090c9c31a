"""Which account owns each resource (ZStack's ``AccountResourceRefVO``).

Services record the owner when they create a resource, in the same transaction
(``own_sync(uuid, "VmInstance", msg.account_uuid)``); the identity layer uses it to show an
account only its own resources and to refuse actions on others'. A resource created without an
account (an in-process call with no session) belongs to the admin account.
"""

from __future__ import annotations

import peewee

from .db import BaseModel, utcnow
from .prepared import Prepared

__all__ = ["ADMIN_ACCOUNT_UUID", "AccountResourceRefVO", "own_sync", "owner_of_sync", "disown_sync"]

ADMIN_ACCOUNT_UUID = "36c27e8ff05c4780bf6d2fa65700f22e"
"""The admin account's UUID, the same on every node of a cluster (as in ZStack)."""


class AccountResourceRefVO(BaseModel):
    resource_uuid = peewee.CharField(primary_key=True, max_length=32)
    resource_type = peewee.CharField(max_length=64, index=True)
    account_uuid = peewee.CharField(max_length=32, index=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "account_resource_ref"


_OWN = Prepared(lambda p: AccountResourceRefVO.insert(
    resource_uuid=p.resource_uuid, resource_type=p.resource_type, account_uuid=p.account_uuid,
    created_at=p.created_at).on_conflict_ignore())
"""Every create of every service runs it: compiled once (see :mod:`zstack_core.prepared`)."""


def own_sync(resource_uuid: str, resource_type: str, account_uuid: str | None) -> None:
    """Record ``account_uuid`` (or admin) as the owner of a new resource (database thread)."""
    _OWN.run(resource_uuid=resource_uuid, resource_type=resource_type,
             account_uuid=account_uuid or ADMIN_ACCOUNT_UUID, created_at=utcnow())


def owner_of_sync(resource_uuid: str) -> str | None:
    row = AccountResourceRefVO.get_or_none(AccountResourceRefVO.resource_uuid == resource_uuid)
    return None if row is None else row.account_uuid


def disown_sync(resource_uuid: str) -> None:
    """Forget the owner of a resource that no longer exists (database thread)."""
    AccountResourceRefVO.delete().where(AccountResourceRefVO.resource_uuid == resource_uuid).execute()
