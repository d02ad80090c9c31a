"""zstack-quota on a real management node: compute (zstack-kvm) on the libvirt test driver and
this plugin, nothing else. Quotas bind Normal accounts, so each test logs one in."""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs
import peewee
import pytest

from zstack_core import ManagementNode, hookimpl
from zstack_core.db import BaseModel, ModelRegistration, utcnow
from zstack_core.testing import EnvSpec, NodeFactory, api, assert_error, build_env

pytest_plugins = ["zstack_core.testing"]


@attrs.define
class Cloud:
    node: ManagementNode
    account_uuid: str
    session: str
    """A session of the Normal account ``alice``."""

    async def create_vm(self, name: str, session: str | None = None) -> str:
        reply = await api(self.node, "CreateVmInstance", name=name, cpu_num=1, memory_size=64 << 20,
                          session_uuid=session or self.session)
        return str(reply.inventory.uuid)

    async def vm_names(self) -> list[str]:
        vms = (await api(self.node, "QueryVmInstance", session_uuid=self.session)).inventories
        return sorted(vm.name for vm in vms)


@pytest.fixture
async def cloud(make_node: NodeFactory) -> Cloud:
    node = await make_node(plugins=["kvm", "quota"])
    await build_env(node, EnvSpec().zone().cluster().host())
    account = (await api(node, "CreateAccount", name="alice", password="alice-password")).inventory
    session = (await api(node, "LogInByAccount", account_name="alice", password="alice-password")).inventory
    return Cloud(node=node, account_uuid=account.uuid, session=session.uuid)


async def test_quota_refuses_the_vm_over_the_limit(cloud: Cloud) -> None:
    await api(cloud.node, "UpdateGlobalConfig", category="quota", name="vm.num", value=2)
    await cloud.create_vm("vm-1")
    await cloud.create_vm("vm-2")

    error = await assert_error("QUOTA.1000", cloud.create_vm("vm-3"))
    assert error.opaque == {"limit": 2, "used": 2}
    assert await cloud.vm_names() == ["vm-1", "vm-2"]  # nothing was created
    # The admin account is not limited.
    admin = (await api(cloud.node, "CreateVmInstance", name="admin-vm", cpu_num=1, memory_size=64 << 20)).inventory
    assert admin.state == "Running"


async def test_account_tag_overrides_the_global_config(cloud: Cloud) -> None:
    tag = (await api(cloud.node, "CreateSystemTag", resource_uuid=cloud.account_uuid, tag="quota::vm::1")).inventory
    await cloud.create_vm("vm-1")
    await assert_error("QUOTA.1000", cloud.create_vm("vm-2"))

    await api(cloud.node, "DeleteSystemTag", uuid=tag.uuid)  # back to quota/vm.num (20)
    await cloud.create_vm("vm-2")
    usage = (await api(cloud.node, "GetQuotaUsage", session_uuid=cloud.session)).usage
    assert usage.vm_num_limit == 20


@pytest.mark.parametrize(("tag", "session", "code"), [
    ("quota::vm::many", False, "QUOTA.1001"),
    ("quota::vm::-1", False, "QUOTA.1001"),
    ("quota::vm::100", True, "QUOTA.1002"),  # an account cannot raise its own quota
])
async def test_quota_tags_are_checked(cloud: Cloud, tag: str, session: bool, code: str) -> None:
    await assert_error(code, api(cloud.node, "CreateSystemTag", resource_uuid=cloud.account_uuid, tag=tag,
                                 session_uuid=cloud.session if session else None))
    tags = (await api(cloud.node, "QuerySystemTag",
                      conditions=[{"name": "resourceUuid", "op": "=", "value": cloud.account_uuid}])).inventories
    assert tags == []


async def test_the_default_quota_is_a_validated_global_config(cloud: Cloud) -> None:
    await assert_error("SYS.1007", api(cloud.node, "UpdateGlobalConfig", category="quota", name="vm.num", value=-1))
    await api(cloud.node, "UpdateGlobalConfig", category="quota", name="vm.num", value=0)
    await assert_error("QUOTA.1000", cloud.create_vm("vm-1"))


async def test_destroyed_vms_do_not_count(cloud: Cloud) -> None:
    await api(cloud.node, "UpdateGlobalConfig", category="quota", name="vm.num", value=1)
    first = await cloud.create_vm("vm-1")
    await assert_error("QUOTA.1000", cloud.create_vm("vm-2"))
    await api(cloud.node, "DestroyVmInstance", uuid=first, session_uuid=cloud.session)
    await cloud.create_vm("vm-2")


class SlowCreateCheck:
    """Another plugin whose create check takes a while (a call to some remote system): it widens
    the window between the quota check and compute recording the VM."""

    @hookimpl
    async def zstack_vm_create_check(self) -> None:
        await asyncio.sleep(0.05)


async def test_concurrent_creates_never_exceed_the_quota(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["kvm", "quota", SlowCreateCheck()])
    await build_env(node, EnvSpec().zone().cluster().host())
    await api(node, "CreateAccount", name="bob", password="bob-password")
    session = (await api(node, "LogInByAccount", account_name="bob", password="bob-password")).inventory.uuid
    await api(node, "UpdateGlobalConfig", category="quota", name="vm.num", value=3)

    async def create(i: int) -> str:
        reply = await api(node, "CreateVmInstance", name=f"vm-{i}", cpu_num=1, memory_size=64 << 20,
                          session_uuid=session)
        return str(reply.inventory.uuid)

    results = await asyncio.gather(*(create(i) for i in range(8)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 5 and all(getattr(r, "code", None) == "QUOTA.1000" for r in refused), refused
    assert len((await api(node, "QueryVmInstance", session_uuid=session)).inventories) == 3


async def test_a_failed_create_gives_its_place_back(cloud: Cloud) -> None:
    await api(cloud.node, "UpdateGlobalConfig", category="quota", name="vm.num", value=1)
    # Too big for the host: passes the quota checks, then compute fails and rolls back.
    await assert_error("VM", api(cloud.node, "CreateVmInstance", name="huge", cpu_num=1, memory_size=1 << 40,
                                 session_uuid=cloud.session))
    await cloud.create_vm("vm-1")


async def test_usage_is_recorded_by_the_vm_listener(cloud: Cloud) -> None:
    first = await cloud.create_vm("vm-1")
    await cloud.create_vm("vm-2")
    await api(cloud.node, "DestroyVmInstance", uuid=first, session_uuid=cloud.session)
    usage = (await api(cloud.node, "GetQuotaUsage", session_uuid=cloud.session)).usage
    assert (usage.account_uuid, usage.vm_num, usage.peak_vm_num, usage.vm_num_limit) == (cloud.account_uuid, 1, 2, 20)
    # The admin may read any account's usage; an account only its own.
    assert (await api(cloud.node, "GetQuotaUsage", uuid=cloud.account_uuid)).usage.vm_num == 1
    await assert_error("SYS.1012", api(cloud.node, "GetQuotaUsage", uuid="0" * 32, session_uuid=cloud.session))


async def test_plugin_registers_what_zstack_plugins_shows(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["quota"])  # without compute: nothing to limit, still loads
    info = node.plugins.infos["quota"]
    assert info.distribution == "zstack-quota"
    assert {"zstack_api_interceptors", "zstack_models", "zstack_vm_create_check", "zstack_vm_state_changed"} <= set(info.hooks)
    assert node.error_spaces["QUOTA"][0] == "quota"
    assert node.configs.get("quota", "vm.num") == 20
    assert node.api.owner("GetQuotaUsage") == "quota"


# -- the schema migration -------------------------------------------------------------------------


class QuotaUsageV1(BaseModel):
    """quota_usage as version 1 of this plugin created it."""

    account_uuid = peewee.CharField(primary_key=True, max_length=32)
    vm_num = peewee.IntegerField(default=0)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "quota_usage"


class QuotaVersion1:
    """Stands in for zstack-quota 1.x: only its schema."""

    @hookimpl
    def zstack_models(self) -> list[ModelRegistration]:
        return [ModelRegistration(name="quota", models=[QuotaUsageV1])]


async def test_version_1_database_is_migrated(make_node: NodeFactory, tmp_path: Path) -> None:
    data = tmp_path / "upgraded"
    old = await make_node(plugins=[QuotaVersion1()], data_dir=data)
    await old.db.run(lambda: QuotaUsageV1.create(account_uuid="a" * 32, vm_num=3))
    await old.stop()

    new = await make_node(plugins=["quota"], data_dir=data)
    assert new.db.schema_versions()["quota"] == 2
    usage = (await api(new, "GetQuotaUsage", uuid="a" * 32)).usage
    assert (usage.vm_num, usage.peak_vm_num) == (3, 3)  # the migration set the new column
