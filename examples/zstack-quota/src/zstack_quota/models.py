"""What zstack-quota stores: each account's VM usage, with a schema that has grown once.

Version 1 kept the number of VMs an account has; version 2 added the most it ever had
(``peak_vm_num``). A database written by version 1 is upgraded by :data:`MIGRATIONS` when a
node with this version starts; a new database gets the current tables directly.
"""

from __future__ import annotations

import attrs
import peewee
from playhouse.migrate import SchemaMigrator, migrate

from zstack_core.db import BaseModel, Migration, ModelRegistration, utcnow


@attrs.frozen(kw_only=True)
class QuotaUsageInventory:
    account_uuid: str
    vm_num: int
    peak_vm_num: int


class QuotaUsageVO(BaseModel):
    """VMs an account has (not destroyed), kept up to date by the VM listeners."""

    INVENTORY = QuotaUsageInventory

    account_uuid = peewee.CharField(primary_key=True, max_length=32)
    vm_num = peewee.IntegerField(default=0)
    peak_vm_num = peewee.IntegerField(default=0)  # version 2
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "quota_usage"


def _add_peak_vm_num(migrator: SchemaMigrator, db: peewee.Database) -> None:
    migrate(migrator.add_column("quota_usage", "peak_vm_num", peewee.IntegerField(default=0)))
    # The peak is at least what an account has now.
    db.execute_sql("UPDATE quota_usage SET peak_vm_num = vm_num")


MIGRATIONS = [Migration(version=2, apply=_add_peak_vm_num, description="add quota_usage.peak_vm_num")]

SCHEMA = ModelRegistration(name="quota", models=[QuotaUsageVO], migrations=MIGRATIONS)
