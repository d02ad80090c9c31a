"""What start-up does not pay for (BENCHMARKS.md, start-up): structural checks, not timings.

``zstack node start`` must not import what only a client command or a first request needs
(the SDK and ``requests``, the HTTP API's schema and OpenAPI builders), and ``import
zstack_core`` must not import the HTTP stack. The methods attrs generates for the zstack
classes come from a bytecode cache (``zstack_core._attrs_cache``) written like ``.pyc`` files:
a second process compiles none of them, gets the same classes (``__hash__`` included, whose
generated source differs per process), and a damaged cache file is only a miss.

Each test runs fresh interpreters (about 1-3 s each here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TIMEOUT = 180

_NODE_START = r"""
import asyncio, gc, json, sys
import zstack_core
after_import = sorted(sys.modules)
gc_enabled_after_import = gc.isenabled()
from zstack_core.cli import build_parser  # `zstack node start` builds the whole parser first
build_parser()
from zstack_core import ManagementNode

async def main():
    node = ManagementNode(data_dir=sys.argv[1], settings={"api.host": "127.0.0.1", "api.port": 0})
    await node.start()
    server = await node.start_http()
    at_ready = sorted(sys.modules)
    await server.stop()
    await node.stop()
    return at_ready

at_ready = asyncio.run(main())
print(json.dumps({"after_import": after_import, "at_ready": at_ready, "gc": gc_enabled_after_import}))
"""

NOT_AT_START = ("requests", "urllib3", "zstack_core.sdk", "zstack_core.http.schema", "zstack_core.http.openapi",
                "zstack_core.scaffold", "playhouse.db_url", "playhouse.migrate")
"""Loaded by the client commands, by the first request that needs a field schema or the OpenAPI
document, by ``zstack plugin new``, by a server database URL or a schema migration; never by a
node start on SQLite with its schema up to date (or new)."""

NOT_AT_IMPORT = ("zstack_core.http", "starlette", "uvicorn", *NOT_AT_START)
"""``import zstack_core`` (an embedding program, a plugin's tests) loads no HTTP stack."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    env.update(extra)
    return env


def _python(code: str, *args: str, env: dict[str, str], flags: tuple[str, ...] = ()) -> str:
    proc = subprocess.run([sys.executable, *flags, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_node_start_does_not_import_what_only_clients_and_first_requests_need(tmp_path: Path) -> None:
    out = json.loads(_python(_NODE_START, str(tmp_path / "node"),
                             env=_env(ZSTACK_ADMIN_PASSWORD="Passw0rd-1234")).splitlines()[-1])
    at_import, at_ready = set(out["after_import"]), set(out["at_ready"])
    assert "zstack_core.node" in at_import and "zstack_core.http.app" in at_ready  # the check sees imports
    assert sorted(m for m in NOT_AT_IMPORT if m in at_import) == []
    assert sorted(m for m in NOT_AT_START if m in at_ready) == []
    assert out["gc"] is True  # paused only while zstack_core is imported


_CLASSES = r"""
import json, sys
import zstack_core, zstack_kvm.api
from zstack_core import _attrs_cache
from zstack_core.flow import FlowContribution, NoRollbackFlow
from zstack_kvm.api import APICreateVmInstanceMsg

class F(NoRollbackFlow):
    async def run(self, data):
        pass

flow = F()
a = FlowContribution(chain="c", flow=flow, order=1)
b = FlowContribution(chain="c", flow=flow, order=1)
# attrs' __hash__: hash((hash(<its generated file name for "hash">), fields...)), the first
# number salted per process: the cached code must carry this process's.
type_hash = hash("<attrs generated hash zstack_core.flow.FlowContribution>")
msg = APICreateVmInstanceMsg(id="m1", name="vm", instance_offering_uuid="o", image_uuid="i", l3_network_uuids=["l"])
print(json.dumps({
    "stats": _attrs_cache.stats,
    "path": _attrs_cache._path,
    "hash_ok": hash(a) == hash(b) == hash((type_hash, "c", flow, 1)),
    "eq": a == b and a != FlowContribution(chain="c", flow=flow, order=2),
    "repr": repr(msg),
    "msg_eq": msg == APICreateVmInstanceMsg(name="vm", instance_offering_uuid="o", image_uuid="i",
                                            l3_network_uuids=["l"]),
}))
"""


def _classes(prefix: Path, seed: str, write: bool = True) -> dict[str, Any]:
    env = _env(PYTHONHASHSEED=seed)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    # -X pycache_prefix: this test's own cache directory, never the source tree's.
    return json.loads(_python(_CLASSES, env=env, flags=("-X", f"pycache_prefix={prefix}")).splitlines()[-1])


def test_the_methods_attrs_generates_come_from_a_cache_written_like_pyc_files(tmp_path: Path) -> None:
    prefix = tmp_path / "pycache"
    dry = _classes(prefix, seed="1", write=False)  # PYTHONDONTWRITEBYTECODE: nothing written
    assert dry["stats"]["compiled"] > 100 and dry["stats"]["hits"] == 0
    assert dry["path"].startswith(str(prefix)) and not Path(dry["path"]).exists()

    first = _classes(prefix, seed="1")
    assert first["stats"]["compiled"] > 100 and Path(first["path"]).exists()

    second = _classes(prefix, seed="2")  # another hash salt: every __hash__ source differs
    assert second["stats"]["compiled"] == 0
    assert second["stats"]["hits"] == first["stats"]["compiled"]
    for run in (first, second):
        assert run["hash_ok"] and run["eq"] and run["msg_eq"]
    assert second["repr"] == first["repr"] and second["repr"].startswith("APICreateVmInstanceMsg(")

    Path(first["path"]).write_bytes(b"\x00 not a marshal file")  # damaged: a miss, then rewritten
    damaged = _classes(prefix, seed="3")
    assert damaged["stats"]["compiled"] == first["stats"]["compiled"] and damaged["hash_ok"]
    assert _classes(prefix, seed="4")["stats"]["compiled"] == 0


def test_zstack_attrs_cache_0_leaves_attrs_as_it_is() -> None:
    code = ("import attr._make as make; original = make._compile_and_eval; import zstack_core; "
            "from zstack_core import _attrs_cache as c; "
            "print(make._compile_and_eval is original, c.stats['hits'] + c.stats['compiled'])")
    assert _python(code, env=_env(ZSTACK_ATTRS_CACHE="0")).split() == ["True", "0"]
    assert _python(code, env=_env()).split()[0] == "False"
