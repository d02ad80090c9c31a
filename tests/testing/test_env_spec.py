"""EnvSpec / build_env: from nothing to a running VM in a few lines, through public APIs only,
on the installed services and the libvirt test driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from zstack_core import ZStackError
from zstack_core.testing import EnvSpec, NodeFactory, api, assert_error, build_env

pytest_plugins = ["zstack_core.testing"]


async def test_full_environment_gives_a_running_vm_with_root_volume_and_nic(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["kvm", "storage", "network"])
    spec = (EnvSpec().zone().cluster().host()
            .primary_storage().l2_network().l3_network(cidr="10.0.0.0/29").image()
            .vm(memory_size="64M"))
    env = await build_env(node, spec)
    assert list(env) == ["zone", "cluster", "host", "primary_storage", "l2", "l3", "l3_ip_range", "image", "vm"]
    assert env.host.status == "Connected" and env.host.management_url == "test:///default"
    assert env.primary_storage.url.startswith(str(node.data_dir))
    vm = env.vm
    assert vm.state == "Running" and vm.host_uuid == env.host.uuid and vm.memory_size == 64 * 1024 ** 2
    [nic] = vm.vm_nics
    assert nic.l3_network_uuid == env.l3.uuid and nic.ip == "10.0.0.2" and nic.gateway == "10.0.0.1"
    [root] = vm.all_volumes
    assert root.type == "Root" and root.primary_storage_uuid == env.primary_storage.uuid
    assert root.root_image_uuid == env.image.uuid
    # What was built is what the node has: read back through the query API.
    [again] = (await api(node, "QueryVmInstance", conditions=[{"name": "uuid", "op": "=", "value": vm.uuid}])).inventories
    assert again.state == "Running"


async def test_compute_alone_builds_zone_cluster_host_vm(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["kvm"])
    env = await build_env(node, EnvSpec().zone().cluster().host().vm(image=None, l3_networks=()))
    assert env.vm.state == "Running" and env.vm.vm_nics == [] and env.vm.all_volumes == []


async def test_names_and_parameters_are_the_callers(make_node: NodeFactory, tmp_path: Path) -> None:
    node = await make_node(plugins=["kvm"])
    spec = (EnvSpec().zone("z1", description="first").zone("z2")
            .cluster("c2", zone="z2").host("h2", cluster="c2").vm("v", image=None, l3_networks=(), cpu_num=2))
    env = await build_env(node, spec)
    assert (env.z1.name, env.z1.description) == ("z1", "first")
    assert env.c2.zone_uuid == env.z2.uuid and env.h2.cluster_uuid == env.c2.uuid
    assert env.v.cpu_num == 2 and env.v.zone_uuid == env.z2.uuid


async def test_a_refused_step_keeps_its_error_and_names_the_step(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["kvm"])
    spec = EnvSpec().zone().cluster().host().vm(image=None, l3_networks=(), memory_size="1T")
    with pytest.raises(ZStackError) as info:
        await build_env(node, spec)
    assert info.value.__notes__ == ["while building the environment: step 'vm' (CreateVmInstance)"]
    # The same failure, asserted the way a plugin's test would.
    await assert_error(info.value.code, build_env(node, EnvSpec().vm("again", image=None, l3_networks=(),
                                                                      memory_size="1T")))


def test_a_step_name_is_used_once() -> None:
    with pytest.raises(ValueError, match="already has a step named 'zone'"):
        EnvSpec().zone().zone()
