"""Strict start-up: a wrong plugin stops the node with one NodeStartError that tells its author
what to fix: the distribution and version, the module, the hook (or both plugins of a clash)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from zstack_core import ManagementNode, NodeStartError, Service, hookimpl

from .conftest import MakeDist


async def start_error(data_dir: Path, **kwargs: object) -> NodeStartError:
    node = ManagementNode(data_dir=data_dir, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(NodeStartError) as info:
        await node.start()
    assert node.state == "Failed"
    assert node.bus.inflight == 0
    assert not any(node.bus.has_service(sid) for sid in ("compute", "storage", "network"))
    return info.value


def assert_one_clear_message(exc: NodeStartError) -> str:
    text = str(exc)
    assert "Traceback" not in text
    assert "\n" not in text
    return text


async def test_unknown_hook_with_marker(make_dist: MakeDist, data_dir: Path) -> None:
    module = make_dist("zstack-typo", "2.3.4", "typo", """
        from zstack_core import hookimpl

        @hookimpl
        def zstack_servics(node):
            return []
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "zstack-typo" in text and "2.3.4" in text and module in text
    assert "unknown hook 'zstack_servics'" in text
    assert "did you mean 'zstack_services'?" in text


async def test_unknown_hook_without_marker_is_caught(make_dist: MakeDist, data_dir: Path) -> None:
    # pytest's rule: a function named like a hook is a hookimpl, so a typo is not silently ignored.
    module = make_dist("zstack-typo", "1.0", "typo", """
        def zstack_node_redy(node):
            pass
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "zstack-typo 1.0" in text and module in text
    assert "'zstack_node_redy'" in text and "did you mean 'zstack_node_ready'?" in text


async def test_several_unknown_hooks_are_one_error(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-typo", "1.0", "typo", """
        def zstack_servics(node):
            return []

        def zstack_node_strat(node):
            pass
    """)
    node = ManagementNode(data_dir=data_dir)
    with pytest.raises(NodeStartError) as info:
        await node.start()
    text = str(info.value)
    assert "'zstack_servics'" in text and "'zstack_node_strat'" in text
    assert text.count("zstack-typo 1.0") == 2  # each problem says whose it is


async def test_optional_hook_for_unknown_name_is_allowed(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-opt", "1.0", "opt", """
        from zstack_core import hookimpl

        @hookimpl(optionalhook=True)
        def zstack_something_from_a_later_version(node):
            pass
    """)
    async with ManagementNode(data_dir=data_dir) as node:
        assert node.plugins.infos["opt"].hooks == ["zstack_something_from_a_later_version"]


async def test_argument_the_hookspec_lacks(make_dist: MakeDist, data_dir: Path) -> None:
    module = make_dist("zstack-args", "0.9", "args", """
        from zstack_core import hookimpl

        @hookimpl
        def zstack_services(node, cluster):
            return []
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "zstack-args 0.9" in text and module in text
    assert "zstack_services" in text and "cluster" in text


async def test_subset_of_hookspec_arguments_is_fine(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-sub", "1.0", "sub", """
        from zstack_core import hookimpl

        @hookimpl
        def zstack_services():
            return []
    """)
    async with ManagementNode(data_dir=data_dir) as node:
        assert node.plugins.infos["sub"].hooks == ["zstack_services"]


async def test_import_error_reported_by_distribution_and_entry_point(make_dist: MakeDist, data_dir: Path) -> None:
    module = make_dist("zstack-broken", "3.1", "broken", """
        import json
        raise ImportError("libfoo.so.1: cannot open shared object file")
    """)
    exc = await start_error(data_dir)
    text = assert_one_clear_message(exc)
    assert "plugin 'broken'" in text and "zstack-broken 3.1" in text and module in text
    assert "failed to import" in text
    assert "ImportError: libfoo.so.1: cannot open shared object file" in text


def test_import_error_also_stops_inspect(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-broken", "3.1", "broken", "1 / 0\n")
    node = ManagementNode(data_dir=data_dir)
    with pytest.raises(NodeStartError, match=r"zstack-broken 3\.1.*ZeroDivisionError"):
        node.inspect()
    assert node.plugins.infos["broken"].error is not None


def service_plugin(service_id: str) -> str:
    return f"""
        from zstack_core import Service, hookimpl

        class S(Service):
            id = {service_id!r}

        @hookimpl
        def zstack_services(node):
            return [S()]
    """


async def test_two_plugins_claim_one_service_id(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-one", "1.0", "one", service_plugin("dup"))
    make_dist("zstack-two", "1.0", "two", service_plugin("dup"))
    text = assert_one_clear_message(await start_error(data_dir))
    assert "service id 'dup'" in text
    assert "'one'" in text and "'two'" in text


async def test_plugin_claims_an_installed_service_id(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-clash", "1.0", "clash", service_plugin("network"))
    text = assert_one_clear_message(await start_error(data_dir))
    assert "service id 'network'" in text and "'network'" in text and "'clash'" in text


API_SOURCE = """
    import attrs
    from zstack_core import APIMessage, ApiRegistration, Service, hookimpl

    @attrs.define(kw_only=True)
    class APIDoThingMsg(APIMessage):
        SERVICE_ID = {sid!r}

    class S(Service):
        id = {sid!r}

    @hookimpl
    def zstack_services(node):
        return [S()]

    @hookimpl
    def zstack_api_messages():
        return [ApiRegistration(message=APIDoThingMsg)]
"""


async def test_two_plugins_claim_one_api_name(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-one", "1.0", "one", API_SOURCE.format(sid="svc-one"))
    make_dist("zstack-two", "1.0", "two", API_SOURCE.format(sid="svc-two"))
    text = assert_one_clear_message(await start_error(data_dir))
    assert "API 'DoThing'" in text and "'one'" in text and "'two'" in text


ERRORS_SOURCE = """
    from zstack_core import ErrorCodeSpace, hookimpl

    @hookimpl
    def zstack_error_codes():
        return [ErrorCodeSpace(prefix={prefix!r}, codes={{"1000": "x"}})]
"""


async def test_two_plugins_claim_one_error_code_prefix(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-one", "1.0", "one", ERRORS_SOURCE.format(prefix="FOO"))
    make_dist("zstack-two", "1.0", "two", ERRORS_SOURCE.format(prefix="FOO"))
    text = assert_one_clear_message(await start_error(data_dir))
    assert "prefix 'FOO'" in text and "'one'" in text and "'two'" in text


async def test_plugin_claims_the_kernel_prefix(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-one", "1.0", "one", ERRORS_SOURCE.format(prefix="SYS"))
    text = assert_one_clear_message(await start_error(data_dir))
    assert "prefix 'SYS'" in text and "'zstack_core'" in text and "'one'" in text


@pytest.mark.parametrize(("hook", "returned"), [
    ("zstack_services", "['not a service']"),
    ("zstack_services", "object()"),
    ("zstack_api_messages", "[42]"),
    ("zstack_api_interceptors", "[object()]"),
    ("zstack_error_codes", "['FOO']"),
    ("zstack_flows", "[None]"),
])
async def test_registration_hook_returning_the_wrong_type(hook: str, returned: str, make_dist: MakeDist,
                                                          data_dir: Path) -> None:
    module = make_dist("zstack-wrong", "4.2", "wrong", f"""
        from zstack_core import hookimpl

        @hookimpl
        def {hook}():
            return {returned}
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "zstack-wrong 4.2" in text and module in text and hook in text


async def test_async_registration_hook_is_refused(make_dist: MakeDist, data_dir: Path) -> None:
    module = make_dist("zstack-async", "1.0", "asyncreg", """
        from zstack_core import hookimpl

        @hookimpl
        async def zstack_services(node):
            return []
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "zstack-async 1.0" in text and module in text and "zstack_services" in text and "async" in text


async def test_registration_hook_that_raises(make_dist: MakeDist, data_dir: Path) -> None:
    module = make_dist("zstack-raises", "1.0", "raises", """
        def zstack_services(node):
            raise KeyError("region")
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "zstack-raises 1.0" in text and module in text and "zstack_services" in text and "KeyError" in text


async def test_api_without_a_service_is_refused(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-orphan", "1.0", "orphan", """
        import attrs
        from zstack_core import APIMessage, ApiRegistration, hookimpl

        @attrs.define(kw_only=True)
        class APIOrphanMsg(APIMessage):
            SERVICE_ID = "nobody"

        @hookimpl
        def zstack_api_messages():
            return [ApiRegistration(message=APIOrphanMsg)]
    """)
    text = assert_one_clear_message(await start_error(data_dir))
    assert "API Orphan" in text and "'orphan'" in text and "'nobody'" in text


class GoodService(Service):
    id = "good"
    started = 0

    async def start(self) -> None:
        GoodService.started += 1


class GoodPlugin:
    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return [GoodService()]


async def test_a_bad_plugin_starts_nothing(make_dist: MakeDist, data_dir: Path) -> None:
    make_dist("zstack-typo", "1.0", "typo", "def zstack_servics(node):\n    return []\n")
    GoodService.started = 0
    await start_error(data_dir, plugins=[GoodPlugin()])
    assert GoodService.started == 0


async def test_explicit_plugin_errors_say_it_was_registered_explicitly(data_dir: Path) -> None:
    class Misspelled:
        @hookimpl
        def zstack_node_stpo(self) -> None: ...

    text = assert_one_clear_message(await start_error(data_dir, plugins=[Misspelled()], load_entry_points=False))
    assert "plugin 'Misspelled'" in text and "registered explicitly" in text
    assert f"{__name__}." in text and "did you mean 'zstack_node_stop'?" in text


async def test_two_distributions_claim_one_plugin_name(make_dist: MakeDist, data_dir: Path) -> None:
    # Without this check the second one would silently not load.
    first = make_dist("zstack-alpha", "1.0", "shared", service_plugin("alpha"))
    second = make_dist("zstack-beta", "2.0", "shared", service_plugin("beta"))
    text = assert_one_clear_message(await start_error(data_dir))
    assert "plugin name 'shared'" in text
    assert "zstack-alpha 1.0" in text and "zstack-beta 2.0" in text and first in text and second in text
