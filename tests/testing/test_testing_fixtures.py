"""zstack_core.testing: the fixtures and helpers plugin authors test with, used as they would.

The plugin below is an ordinary plugin object (no entry point), so these tests depend on no
service; the entry-point path is exercised with the installed service distributions.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from zstack_core import (
    APIEvent,
    APIMessage,
    ApiRegistration,
    ErrorCodeSpace,
    ManagementNode,
    Service,
    ZStackError,
    handles,
    hookimpl,
)
from zstack_core.testing import EnvSpec, NodeFactory, Ref, Step, api, assert_error, build_env, installed_plugins

pytest_plugins = ["zstack_core.testing"]

ThingErrors = ErrorCodeSpace(prefix="THING", codes={"1000": "no such shelf", "1001": "shelf is full"})


@attrs.define(kw_only=True)
class Thing:
    uuid: str
    name: str
    shelf_uuid: str | None = None
    tags: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class APICreateThingMsg(APIMessage):
    SERVICE_ID = "things"
    name: str
    shelf_uuid: str | None = None
    tags: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True)
class APIThingEvent(APIEvent):
    inventory: Thing | None = None


class ThingService(Service):
    id = "things"

    def __init__(self) -> None:
        super().__init__()
        self.things: dict[str, Thing] = {}
        self.stopped = False

    @handles(APICreateThingMsg)
    async def create(self, msg: APICreateThingMsg) -> APIThingEvent:
        if msg.shelf_uuid is not None and msg.shelf_uuid not in self.things:
            raise ThingErrors.exc("1000", f"no shelf {msg.shelf_uuid}")
        if msg.name == "overflow":
            raise ThingErrors.exc("1001", "the shelf holds one thing", cause=ThingErrors.error("1000", "inner"))
        thing = Thing(uuid=f"{len(self.things):032x}", name=msg.name, shelf_uuid=msg.shelf_uuid, tags=msg.tags)
        self.things[thing.uuid] = thing
        return APIThingEvent(inventory=thing)

    async def stop(self) -> None:
        self.stopped = True


class ThingPlugin:
    """A plugin as an object: the hookimpls are its methods."""

    def __init__(self) -> None:
        self.service = ThingService()

    @hookimpl
    def zstack_error_codes(self) -> Sequence[ErrorCodeSpace]:
        return [ThingErrors]

    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return [self.service]

    @hookimpl
    def zstack_api_messages(self) -> Sequence[ApiRegistration]:
        return [ApiRegistration(message=APICreateThingMsg)]


# -- make_node ----------------------------------------------------------------------------------


async def test_make_node_starts_a_node_with_only_the_plugin_objects_given(make_node: NodeFactory,
                                                                            tmp_path: Path) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    assert node.state == "Running"
    kernel = {name for name, info in node.plugins.infos.items() if info.builtin}
    assert set(node.service_owner.values()) - kernel == {"ThingPlugin"}
    # No installed plugin was imported or loaded: they are not even listed.
    assert set(node.plugins.infos) - kernel == {"ThingPlugin"}
    assert node.properties["node.libvirt_uri"] == "test:///default"
    assert node.data_dir.is_relative_to(tmp_path)
    assert (node.data_dir / "zstack.db").exists()


async def test_make_node_by_entry_point_name_disables_every_other_installed_plugin(make_node: NodeFactory) -> None:
    installed = installed_plugins()
    assert "kvm" in installed, installed  # the workspace installs the service distributions
    node = await make_node(plugins=["kvm"])
    assert node.plugins.infos["kvm"].distribution == "zstack-kvm"
    assert not node.plugins.infos["kvm"].disabled
    for other in set(installed) - {"kvm"}:
        assert node.plugins.infos[other].disabled
        assert other not in node.service_owner.values()
    assert "kvm" in node.service_owner.values()


async def test_make_node_mixes_names_and_objects(make_node: NodeFactory) -> None:
    node = await make_node(plugins=["network", ThingPlugin()])
    owners = set(node.service_owner.values())
    assert {"network", "ThingPlugin"} <= owners
    assert "kvm" not in owners and "storage" not in owners


async def test_unknown_plugin_name_says_what_is_installed(make_node: NodeFactory) -> None:
    with pytest.raises(LookupError, match=r"no installed zstack plugin is named 'kvmm'; did you mean 'kvm'\?"):
        await make_node(plugins=["kvmm"])


async def test_nodes_get_separate_databases_and_are_stopped_after(make_node: NodeFactory) -> None:
    plugin_a, plugin_b = ThingPlugin(), ThingPlugin()
    a = await make_node(plugins=[plugin_a])
    b = await make_node(plugins=[plugin_b])
    assert a.data_dir != b.data_dir
    await make_node.close()
    assert a.state == b.state == "Stopped"
    assert plugin_a.service.stopped and plugin_b.service.stopped


async def test_same_data_dir_restarts_a_node_on_its_data(make_node: NodeFactory, tmp_path: Path) -> None:
    data = tmp_path / "kept"
    first = await make_node(data_dir=data)
    await first.stop()
    second = await make_node(data_dir=data)
    assert second.data_dir == first.data_dir
    assert second.db.schema_versions()["zstack_core"] >= 1


async def test_settings_and_unstarted_nodes(make_node: NodeFactory) -> None:
    node = await make_node(settings={"bus.default_timeout": 2.5}, start=False)
    assert node.state == "Created"
    await node.start()
    assert node.bus.default_timeout == 2.5


@pytest.fixture
def developer_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A shell where the developer disabled kvm and pointed nodes at another data directory."""
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGINS", "kvm")
    monkeypatch.setenv("ZSTACK_NODE_DATA_DIR", str(tmp_path / "elsewhere"))


async def test_developer_shell_variables_do_not_leak_in(developer_shell: None, make_node: NodeFactory,
                                                        tmp_path: Path) -> None:
    node = await make_node(plugins=["kvm"])
    assert not node.plugins.infos["kvm"].disabled
    assert "kvm" in node.service_owner.values()
    assert node.data_dir.is_relative_to(tmp_path / "zstack")
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("zstack_node", [["network"], {"plugins": ["network"], "settings": {"bus.default_timeout": 3.0}}],
                         indirect=True)
async def test_zstack_node_parametrized_with_plugins_or_options(zstack_node: ManagementNode) -> None:
    assert zstack_node.state == "Running"
    assert "network" in zstack_node.service_owner.values()
    assert "kvm" not in zstack_node.service_owner.values()


async def test_zstack_node_without_marker_loads_every_installed_plugin(zstack_node: ManagementNode) -> None:
    assert set(installed_plugins()) <= set(zstack_node.service_owner.values())


# -- api ------------------------------------------------------------------------------------------


async def test_api_takes_snake_case_or_camel_case(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    shelf = (await api(node, "CreateThing", name="shelf")).inventory
    a = (await api(node, "CreateThing", name="a", shelf_uuid=shelf.uuid)).inventory
    b = (await api(node, "CreateThing", {"name": "b", "shelfUuid": shelf.uuid})).inventory
    assert a.shelf_uuid == b.shelf_uuid == shelf.uuid


async def test_api_raises_the_error_of_the_reply(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    with pytest.raises(ZStackError) as info:
        await api(node, "CreateThing", name="x", shelf_uuid="nope")
    assert info.value.code == "THING.1000"


# -- assert_error -----------------------------------------------------------------------------------


async def test_assert_error_on_an_awaitable_returns_the_error_code(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    error = await assert_error("SYS.1007", api(node, "CreateThing", name=3))
    assert error.opaque["field"] == "$.name"
    assert (await assert_error("THING", api(node, "CreateThing", name="x", shelf_uuid="nope"))).code == "THING.1000"


async def test_assert_error_on_a_reply_from_call_api(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    reply = await node.call_api(APICreateThingMsg(name="x", shelf_uuid="nope"))
    assert (await assert_error("THING.1000", reply)).details == "no shelf nope"
    # An awaitable giving a failed reply counts too.
    assert (await assert_error("THING.1000", node.call_api(APICreateThingMsg(name="x", shelf_uuid="no")))).code


async def test_assert_error_as_async_context_manager(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    async with assert_error("THING.1001", caused_by="THING.1000", details="holds one") as caught:
        await api(node, "CreateThing", name="overflow")
    assert caught.error.cause is not None and caught.error.cause.details == "inner"


def test_assert_error_as_sync_context_manager() -> None:
    with assert_error("THING") as caught:
        raise ThingErrors.exc("1001", "full")
    assert caught.error.code == "THING.1001"


@pytest.mark.parametrize(
    ("expected", "kwargs", "message"),
    [
        ("THING.1001", {}, r"expected error THING.1001, got THING.1000 no such shelf: no shelf nope \(codes: THING.1000\)"),
        ("SYS", {}, r"expected error SYS, got THING.1000"),
        ("THING", {"caused_by": "SYS.1000"}, r"expected THING.1000 to be caused by SYS.1000, but its causes are: THING.1000"),
        ("THING", {"details": "full"}, r"expected 'full' in the details of THING.1000, got 'no shelf nope'"),
    ],
)
async def test_assert_error_fails_the_test_on_another_error(make_node: NodeFactory, expected: str,
                                                            kwargs: dict[str, str], message: str) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    with pytest.raises(pytest.fail.Exception, match=message):
        await assert_error(expected, api(node, "CreateThing", name="x", shelf_uuid="nope"), **kwargs)


async def test_assert_error_fails_the_test_when_the_call_succeeds(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    with pytest.raises(pytest.fail.Exception, match="expected the call to fail with THING, but it succeeded"):
        await assert_error("THING", api(node, "CreateThing", name="fine"))
    with pytest.raises(pytest.fail.Exception, match="expected the block to fail with THING, but it succeeded"):
        async with assert_error("THING"):
            await api(node, "CreateThing", name="fine")


def test_assert_error_lets_other_exceptions_through() -> None:
    with pytest.raises(KeyError):
        with assert_error("THING"):
            raise KeyError("a bug, not an API error")


# -- build_env ----------------------------------------------------------------------------------------


async def test_build_env_runs_steps_in_order_resolving_refs(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    spec = (EnvSpec()
            .step("shelf", "CreateThing", name="shelf")
            .step("box", "CreateThing", name="box", shelf_uuid=Ref("shelf"), tags=[Ref("shelf", "name")]))
    env = await build_env(node, spec)
    assert list(env) == ["shelf", "box"]
    assert env.box.shelf_uuid == env.shelf.uuid == env["shelf"].uuid
    assert env.box.tags == ["shelf"]
    with pytest.raises(AttributeError, match="this environment has no 'vm' \\(it has: shelf, box\\)"):
        env.vm  # noqa: B018


async def test_build_env_failure_names_the_step_and_keeps_the_api_error(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    steps = [Step(name="ok", api="CreateThing", params={"name": "ok"}),
             Step(name="bad", api="CreateThing", params={"name": "overflow"})]
    with pytest.raises(ZStackError) as info:
        await build_env(node, steps)
    assert info.value.code == "THING.1001"
    assert info.value.__notes__ == ["while building the environment: step 'bad' (CreateThing)"]


async def test_build_env_refuses_a_ref_to_a_later_step(make_node: NodeFactory) -> None:
    node = await make_node(plugins=[ThingPlugin()])
    spec = EnvSpec().step("box", "CreateThing", name="box", shelf_uuid=Ref("shelf"))
    with pytest.raises(KeyError, match="step 'box' refers to 'shelf', which no earlier step built"):
        await build_env(node, spec)


def test_env_spec_refuses_duplicate_step_names() -> None:
    with pytest.raises(ValueError, match="already has a step named 'a'"):
        EnvSpec().step("a", "CreateThing", name="x").step("a", "CreateThing", name="y")


# -- as a plugin author uses it: a separate pytest run, strict asyncio mode -----------------------


def test_fixtures_work_in_a_plugin_authors_own_test_run(tmp_path: Path) -> None:
    (tmp_path / "test_author.py").write_text(textwrap.dedent('''
        import pytest
        from zstack_core.testing import api, assert_error

        pytest_plugins = ["zstack_core.testing"]
        seen = []

        @pytest.mark.asyncio
        async def test_first(make_node):
            node = await make_node(plugins=["kvm"])
            seen.append(node)
            await assert_error("SYS.1008", api(node, "NoSuchApi"))

        def test_node_of_the_first_test_was_stopped():
            assert [n.state for n in seen] == ["Stopped"]
    '''))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
                             "-o", "asyncio_mode=strict", "-o", "asyncio_default_fixture_loop_scope=function",
                             "test_author.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
