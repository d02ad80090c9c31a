"""docs/plugin-errors.md shows, for each mistake a plugin author can make, the exact message the
node prints. Each message here is produced by installing a plugin with that mistake and starting
a node; the test fails when the message and the document differ.

The document marks each message with ``<!-- message: ID -->`` before a ```` ```text ```` block.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from zstack_core import ManagementNode, NodeStartError

from .conftest import InstallPlugin

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugin-errors.md"


@attrs.frozen
class Dist:
    distribution: str
    version: str
    entry_point: str
    module: str
    source: str


SERVICE = """
    from zstack_core import Service, hookimpl

    class {cls}(Service):
        id = "quota"

    @hookimpl
    def zstack_services(node):
        return [{cls}()]
"""

API = """
    import attrs
    from zstack_core import APIMessage, ApiRegistration, Service, hookimpl

    @attrs.define(kw_only=True)
    class APIGetQuotaMsg(APIMessage):
        SERVICE_ID = "{service}"

    class S(Service):
        id = "{service}"

    @hookimpl
    def zstack_services(node):
        return [S()]

    @hookimpl
    def zstack_api_messages():
        return [ApiRegistration(message=APIGetQuotaMsg)]
"""

CASES: dict[str, list[Dist]] = {
    "unknown-hook": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import hookimpl

        @hookimpl
        def zstack_servics(node):
            return []
    """)],
    "unknown-hook-unmarked": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        def zstack_vm_after_destory(vm):
            pass
    """)],
    "wrong-argument": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import hookimpl

        @hookimpl
        def zstack_vm_after_destroy(vm_instance):
            pass
    """)],
    "import-failure": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        import zstack_quota_helpers  # not installed
    """)],
    "bad-error-prefix": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import ErrorCodeSpace

        QuotaErrors = ErrorCodeSpace(prefix="quota", codes={"1000": "over quota"})
    """)],
    "bad-config-default": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core.globalconfig import GlobalConfig

        VM_NUM = GlobalConfig(category="quota", name="vm.num", type="int", default="ten")
    """)],
    "duplicate-entry-point": [
        Dist("zstack-quota", "1.0", "quota", "zstack_quota", "pass\n"),
        Dist("acme-quota", "2.0", "quota", "acme_quota", "pass\n"),
    ],
    "duplicate-service-id": [
        Dist("zstack-quota", "1.0", "quota", "zstack_quota", SERVICE.format(cls="QuotaService")),
        Dist("acme-quota", "2.0", "acme-quota", "acme_quota", SERVICE.format(cls="AcmeQuotaService")),
    ],
    "duplicate-api": [
        Dist("zstack-quota", "1.0", "quota", "zstack_quota", API.format(service="quota")),
        Dist("acme-quota", "2.0", "acme-quota", "acme_quota", API.format(service="acme-quota")),
    ],
    "duplicate-error-prefix": [
        Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
            from zstack_core import ErrorCodeSpace, hookimpl

            @hookimpl
            def zstack_error_codes():
                return [ErrorCodeSpace(prefix="VM", codes={"1000": "over quota"})]
        """),
        Dist("acme-vm", "2.0", "acme-vm", "acme_vm", """
            from zstack_core import ErrorCodeSpace, hookimpl

            @hookimpl
            def zstack_error_codes():
                return [ErrorCodeSpace(prefix="VM", codes={"1000": "invalid VM operation"})]
        """),
    ],
    "duplicate-schema": [
        Dist(dist, "1.0", ep, module, """
            import peewee
            from zstack_core.db import ModelRegistration, ResourceModel

            class {cls}(ResourceModel):
                used = peewee.IntegerField(default=0)

            def zstack_models():
                return [ModelRegistration(name="quota", models=[{cls}])]
        """.replace("{cls}", cls))
        for dist, ep, module, cls in (("zstack-quota", "quota", "zstack_quota", "QuotaUsageVO"),
                                      ("acme-quota", "acme-quota", "acme_quota", "AcmeQuotaVO"))
    ],
    "duplicate-global-config": [
        Dist(dist, "1.0", ep, module, """
            from zstack_core.globalconfig import GlobalConfig

            def zstack_global_configs():
                return [GlobalConfig(category="quota", name="vm.num", type="int", default=10)]
        """)
        for dist, ep, module in (("zstack-quota", "quota", "zstack_quota"), ("acme-quota", "acme-quota", "acme_quota"))
    ],
    "duplicate-system-tag": [
        Dist(dist, "1.0", ep, module, """
            from zstack_core.tags import PatternedSystemTag

            def zstack_system_tags():
                return [PatternedSystemTag(pattern="quota::vm::{num}", resource_type="Account")]
        """)
        for dist, ep, module in (("zstack-quota", "quota", "zstack_quota"), ("acme-quota", "acme-quota", "acme_quota"))
    ],
    "registration-not-a-list": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core.globalconfig import GlobalConfig

        def zstack_global_configs():
            return GlobalConfig(category="quota", name="vm.num", type="int", default=10)
    """)],
    "registration-wrong-type": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import Service

        class QuotaService(Service):
            id = "quota"

        def zstack_services(node):
            return [QuotaService]  # the class, not an instance
    """)],
    "registration-async": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import ErrorCodeSpace

        async def zstack_error_codes():
            return [ErrorCodeSpace(prefix="QUOTA", codes={"1000": "over quota"})]
    """)],
    "registration-raises": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import Service

        class QuotaService(Service):
            pass  # no id

        def zstack_services(node):
            return [QuotaService()]
    """)],
    "api-without-service": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        import attrs
        from zstack_core import APIMessage, ApiRegistration

        @attrs.define(kw_only=True)
        class APIGetQuotaMsg(APIMessage):
            SERVICE_ID = "quota"

        def zstack_api_messages():
            return [ApiRegistration(message=APIGetQuotaMsg)]
    """)],
    "service-start-fails": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        from zstack_core import Service

        class QuotaService(Service):
            id = "quota"

            async def start(self):
                raise OSError(2, "No such file or directory", "/etc/zstack/quota.json")

        def zstack_services(node):
            return [QuotaService()]
    """)],
    "node-start-hook-fails": [Dist("zstack-quota", "1.0", "quota", "zstack_quota", """
        def zstack_node_start(node):
            raise RuntimeError("quota database is unreachable")
    """)],
}


async def message_of(case: str, install_plugin: InstallPlugin, disabled: list[str], data_dir: Path) -> str:
    """Install the plugins of ``case`` and return the text of the NodeStartError."""
    for d in CASES[case]:
        install_plugin(d.distribution, d.version, d.entry_point, d.module, d.source)
    node = ManagementNode(data_dir=data_dir, disabled_plugins=disabled)
    with pytest.raises(NodeStartError) as info:
        await node.start()
    return str(info.value)


def documented() -> dict[str, str]:
    """Message id -> the message shown in docs/plugin-errors.md."""
    text = DOC.read_text()
    return dict(re.findall(r"<!-- message: ([a-z0-9-]+) -->\n```text\n(.*?)\n```", text, flags=re.S))


def test_every_case_is_documented_once_and_nothing_else() -> None:
    text = DOC.read_text()
    ids = re.findall(r"<!-- message: ([a-z0-9-]+) -->", text)
    assert sorted(ids) == sorted(CASES), "docs/plugin-errors.md and CASES list different mistakes"
    assert len(set(ids)) == len(ids)
    assert sorted(documented()) == sorted(CASES), "each marker must be followed by a ```text block"


@pytest.mark.parametrize("case", list(CASES))
async def test_documented_message_is_what_the_node_prints(case: str, install_plugin: InstallPlugin,
                                                          workspace_plugins: list[str], tmp_path: Path) -> None:
    message = await message_of(case, install_plugin, workspace_plugins, tmp_path / "data")
    assert "Traceback" not in message
    assert documented().get(case) == message, f"update docs/plugin-errors.md ({case}) to:\n{message}"
