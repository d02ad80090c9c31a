"""Faults: a plugin's hookimpl raising inside an extension point.

A third-party plugin (registered beside the installed services) has hookimpls that raise a
plain Python exception (a bug, not a refusal) when armed. The operation that reached them fails
with ``SYS.1010`` naming the plugin, everything it had allocated is rolled back (the consistency
checker finds nothing), a notification hook's failure is logged with the plugin's name without
failing anything, and the node keeps serving other calls, over HTTP too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import requests

from zstack_core import ZStackError, hookimpl
from zstack_core.check import check
from zstack_core.testing import EnvSpec, assert_error, build_env

from .conftest import ADMIN_PASSWORD, Cloud, cloud_spec, driver_xml, start_cloud_node


class BuggyPlugin:
    """Raises ``RuntimeError`` in the hooks named in ``armed``."""

    def __init__(self) -> None:
        self.armed: set[str] = set()

    def _maybe(self, hook: str) -> None:
        if hook in self.armed:
            raise RuntimeError(f"bug in {hook}")

    @hookimpl
    def zstack_vm_create_check(self, spec: Any) -> None:
        self._maybe("zstack_vm_create_check")

    @hookimpl
    async def zstack_vm_before_instantiate_resource(self, spec: Any) -> None:
        self._maybe("zstack_vm_before_instantiate_resource")

    @hookimpl
    async def zstack_vm_before_start(self, vm: Any) -> None:
        self._maybe("zstack_vm_before_start")

    @hookimpl
    def zstack_vm_after_start(self, vm: Any) -> None:
        self._maybe("zstack_vm_after_start")


@pytest.fixture
async def buggy(tmp_path: Path) -> Any:
    plugin = BuggyPlugin()
    url = driver_xml(tmp_path / "driver.xml")
    from zstack_core import ManagementNode

    node = ManagementNode(data_dir=tmp_path / "node", config={}, plugins=[plugin],
                          settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": url})
    await node.start()
    try:
        env = await build_env(node, cloud_spec(url))
        yield plugin, Cloud(node=node, env=env, data_dir=tmp_path / "node")
    finally:
        await node.stop()


@pytest.mark.parametrize("hook", ["zstack_vm_create_check", "zstack_vm_before_instantiate_resource"])
async def test_a_raising_hook_fails_the_create_naming_the_plugin_and_rolls_back(buggy: Any, hook: str) -> None:
    plugin, cloud = buggy
    plugin.armed = {hook}
    with pytest.raises(ZStackError) as info:
        await cloud.vm("victim")
    error = info.value.error
    assert error.caused("SYS.1010"), error  # SYS.1010 itself, or the cause of VM.1007 "creating failed"
    chain = error.chain()
    failure = next(e for e in chain if e.code == "SYS.1010")
    assert failure.opaque["plugin"] == "BuggyPlugin" and hook in failure.details
    assert "RuntimeError: bug in" in str(error)
    # Nothing of the failed create is left: no VM, no volume, no NIC, no address, no capacity.
    assert await cloud.node.query.find("VmInstance", [("name", "=", "victim")]) == []
    report = await check(cloud.node)
    assert report.ok, [str(f) for f in report.findings]
    # The node serves other work: the same API without the bug, and others.
    plugin.armed = set()
    vm = await cloud.vm("fine")
    assert vm.state == "Running"
    assert (await check(cloud.node)).ok


async def test_a_raising_hook_fails_only_the_operation_that_reached_it(buggy: Any) -> None:
    plugin, cloud = buggy
    vm = await cloud.vm(stopped=True)
    plugin.armed = {"zstack_vm_before_start"}
    error = await assert_error("SYS.1010", cloud.call("StartVmInstance", uuid=vm.uuid))
    assert error.opaque["plugin"] == "BuggyPlugin"
    row = (await cloud.node.query.find("VmInstance", [("uuid", "=", vm.uuid)]))[0]
    assert row.state == "Stopped"  # refused before anything changed
    assert (await cloud.call("CreateZone", name="still-serving")).inventory.name == "still-serving"
    plugin.armed = set()
    await cloud.call("StartVmInstance", uuid=vm.uuid)
    assert (await check(cloud.node)).ok


async def test_a_raising_notification_hook_is_logged_and_fails_nothing(buggy: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    plugin, cloud = buggy
    vm = await cloud.vm(stopped=True)
    plugin.armed = {"zstack_vm_after_start"}
    with caplog.at_level(logging.ERROR, logger="zstack.plugins"):
        await cloud.call("StartVmInstance", uuid=vm.uuid)
    row = (await cloud.node.query.find("VmInstance", [("uuid", "=", vm.uuid)]))[0]
    assert row.state == "Running"
    assert any("zstack_vm_after_start" in r.getMessage() and "BuggyPlugin" in r.getMessage() for r in caplog.records)


async def test_the_http_api_answers_500_with_the_plugin_named_and_keeps_serving(buggy: Any) -> None:
    plugin, cloud = buggy
    http = await cloud.node.start_http("127.0.0.1", 0)
    import asyncio

    def scenario() -> None:
        s = requests.Session()
        r = s.put(http.url + "/v1/accounts/login", timeout=30,
                  json={"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}})
        auth = {"Authorization": f"OAuth {r.json()['inventory']['uuid']}"}
        plugin.armed = {"zstack_vm_create_check"}
        r = s.post(http.url + "/v1/vm-instances", headers=auth, timeout=60,
                   json={"params": {"name": "v", "cpuNum": 1, "memorySize": 64 << 20}})
        if r.status_code == 202:  # a long API: the job carries the failure
            r = s.get(http.url + r.headers["Location"], headers=auth, timeout=30)
            while r.status_code == 202:
                r = s.get(http.url + r.headers["Location"], headers=auth, timeout=30)
        body = r.json()
        assert r.status_code == 500 and body["error"]["code"] in ("VM.1007", "SYS.1010"), body
        assert "BuggyPlugin" in json_text(body)
        assert s.get(http.url + "/v1/health", timeout=30).status_code == 200
        assert s.get(http.url + "/v1/zones", headers=auth, timeout=30).status_code == 200

    await asyncio.to_thread(scenario)


def json_text(body: Any) -> str:
    import json

    return json.dumps(body)


async def test_a_raising_hook_of_node_start_stops_start_up_naming_the_plugin(tmp_path: Path) -> None:
    from zstack_core import ManagementNode, NodeStartError

    class BrokenStart:
        @hookimpl
        def zstack_node_start(self, node: Any) -> None:
            raise RuntimeError("cannot start")

    node = ManagementNode(data_dir=tmp_path, config={}, plugins=[BrokenStart()], load_entry_points=False)
    with pytest.raises(NodeStartError, match="BrokenStart"):
        await node.start()
    assert node.state == "Failed"


_ = (EnvSpec, start_cloud_node)
