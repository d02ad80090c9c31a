"""Which account owns each resource (ZStack's ``AccountResourceRefVO``).

Services record the owner when they create a resource, in the same transaction
(``own_sync(uuid, "VmInstance", msg.account_uuid)``); the identity layer uses it to show an
account only its own resources and to refuse actions on others'. A resource created without an
account (an in-process call with no session) belongs to the admin account.
"""

from __future__ import annotations

import peewee

from .db import BaseModel, database_proxy, utcnow

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


_OWN_SQL: dict[type[peewee.Database], tuple[str, list[str]]] = {}
"""The owner ``INSERT`` per kind of database, compiled once: every create of every service runs
it, and composing it was most of its cost (see the scale benchmark)."""


def own_sync(resource_uuid: str, resource_type: str, account_uuid: str | None) -> None:
    """Record ``account_uuid`` (or admin) as the owner of a new resource (database thread)."""
    db = database_proxy.obj
    compiled = _OWN_SQL.get(type(db))
    if compiled is None:
        markers = {"\x00resource": "resource_uuid", "\x00type": "resource_type", "\x00account": "account_uuid",
                   "\x00created": "created_at"}
        sql, values = AccountResourceRefVO.insert(
            resource_uuid="\x00resource", resource_type="\x00type", account_uuid="\x00account",
            created_at="\x00created").on_conflict_ignore().sql()
        compiled = _OWN_SQL[type(db)] = (sql, [markers[v] for v in values])
    sql, names = compiled
    params = {"resource_uuid": resource_uuid, "resource_type": resource_type,
              "account_uuid": account_uuid or ADMIN_ACCOUNT_UUID, "created_at": utcnow()}
    db.execute_sql(sql, [params[n] for n in names])


def owner_of_sync(resource_uuid: str) -> str | None:
    row = AccountResourceRefVO.get_or_none(AccountResourceRefVO.resource_uuid == resource_uuid)
    return None if row is None else row.account_uuid


def disown_sync(resource_uuid: str) -> None:
    """Forget the owner of a resource that no longer exists (database thread)."""
    AccountResourceRefVO.delete().where(AccountResourceRefVO.resource_uuid == resource_uuid).execute()
