"""The node's life: services start in ``start_order`` and stop in reverse, a failed start undoes
what started, node hooks run in order, and the node runs embedded (async and sync) and as the
``zstack`` command."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest

from zstack_core import (
    APIEvent,
    APIMessage,
    ApiRegistration,
    ManagementNode,
    NeedReplyMessage,
    NodeStartError,
    Service,
    SyncManagementNode,
    hookimpl,
    handles,
)
from zstack_core.cli import main as zstack_main

from .conftest import MakeDist

ZSTACK = Path(sys.executable).with_name("zstack")


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []


def ordered_service(rec: Recorder, sid: str, order: int, fail: BaseException | None = None,
                    fail_stop: bool = False) -> Service:
    class Ordered(Service):
        id = sid
        start_order = order

        async def start(self) -> None:
            await asyncio.sleep(0)  # really asynchronous
            if fail is not None:
                rec.events.append(f"{sid}:start-failed")
                raise fail
            rec.events.append(f"{sid}:start")

        async def stop(self) -> None:
            rec.events.append(f"{sid}:stop")
            if fail_stop:
                raise RuntimeError(f"{sid} cannot stop")

    return Ordered()


class ServicesPlugin:
    def __init__(self, *services: Service) -> None:
        self.services = list(services)

    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return self.services


def services_plugin(name: str, *services: Service) -> ServicesPlugin:
    return type(name, (ServicesPlugin,), {})(*services)  # the class name is the plugin name


async def test_services_start_in_order_and_stop_in_reverse(data_dir: Path) -> None:
    rec = Recorder()
    first = services_plugin("First", ordered_service(rec, "c", 30), ordered_service(rec, "a", 10))
    second = services_plugin("Second", ordered_service(rec, "b", 20), ordered_service(rec, "d", 40))
    node = ManagementNode(plugins=[first, second], load_entry_points=False, data_dir=data_dir)
    await node.start()
    assert node.state == "Running"
    assert rec.events == ["a:start", "b:start", "c:start", "d:start"]
    assert all(node.bus.has_service(s) for s in "abcd")
    assert node.service_owner["a"] == "First" and node.service_owner["b"] == "Second"
    await node.stop()
    assert node.state == "Stopped"
    assert rec.events[4:] == ["d:stop", "c:stop", "b:stop", "a:stop"]
    assert not any(node.bus.has_service(s) for s in "abcd")
    await node.stop()  # stopping twice is harmless
    assert rec.events[8:] == []


async def test_a_failed_start_stops_what_started(data_dir: Path) -> None:
    rec = Recorder()
    plugin = services_plugin(
        "Fragile",
        ordered_service(rec, "a", 10),
        ordered_service(rec, "b", 20),
        ordered_service(rec, "c", 30, fail=RuntimeError("disk full")),
        ordered_service(rec, "d", 40),
    )
    node = ManagementNode(plugins=[plugin], load_entry_points=False, data_dir=data_dir)
    with pytest.raises(NodeStartError) as info:
        await node.start()
    text = str(info.value)
    assert "service 'c'" in text and "plugin 'Fragile'" in text and "RuntimeError: disk full" in text
    assert rec.events == ["a:start", "b:start", "c:start-failed", "b:stop", "a:stop"]
    assert node.state == "Failed"
    assert not any(node.bus.has_service(s) for s in "abcd")


async def test_a_failing_stop_does_not_keep_others_running(data_dir: Path) -> None:
    rec = Recorder()
    plugin = services_plugin("P", ordered_service(rec, "a", 10), ordered_service(rec, "b", 20, fail_stop=True),
                             ordered_service(rec, "c", 30))
    async with ManagementNode(plugins=[plugin], load_entry_points=False, data_dir=data_dir):
        pass
    assert rec.events[3:] == ["c:stop", "b:stop", "a:stop"]


async def test_zstack_error_from_start_is_reported_with_its_code(data_dir: Path) -> None:
    from zstack_core import SysErrors

    rec = Recorder()
    plugin = services_plugin("P", ordered_service(rec, "a", 10, fail=SysErrors.exc("1006", "no libvirt")))
    with pytest.raises(NodeStartError, match=r"service 'a' of plugin 'P' failed to start: SYS\.1006.*no libvirt"):
        await ManagementNode(plugins=[plugin], load_entry_points=False, data_dir=data_dir).start()


class HookRecorder:
    """Node hooks, one async and the others sync, recording into the shared list."""

    def __init__(self, rec: Recorder, fail_start: bool = False) -> None:
        self.rec = rec
        self.fail_start = fail_start

    @hookimpl
    async def zstack_node_start(self, node: ManagementNode) -> None:
        await asyncio.sleep(0)
        assert node.state == "Starting"
        self.rec.events.append("hook:start")
        if self.fail_start:
            raise RuntimeError("refusing to start")

    @hookimpl
    def zstack_node_ready(self, node: ManagementNode) -> None:
        assert node.state == "Running"
        self.rec.events.append("hook:ready")

    @hookimpl
    async def zstack_node_stop(self, node: ManagementNode) -> None:
        assert node.state == "Stopping"
        assert node.bus.has_service("a")  # services are still up when the hook runs
        self.rec.events.append("hook:stop")


async def test_node_hooks_in_order(data_dir: Path) -> None:
    rec = Recorder()
    plugins = [HookRecorder(rec), services_plugin("S", ordered_service(rec, "a", 10), ordered_service(rec, "b", 20))]
    async with ManagementNode(plugins=plugins, load_entry_points=False, data_dir=data_dir) as node:
        assert rec.events == ["hook:start", "a:start", "b:start", "hook:ready"]
        assert node.state == "Running"
    assert rec.events[4:] == ["hook:stop", "b:stop", "a:stop"]


async def test_node_start_hook_failure_names_the_plugin(data_dir: Path) -> None:
    rec = Recorder()
    plugins = [HookRecorder(rec, fail_start=True), services_plugin("S", ordered_service(rec, "a", 10))]
    node = ManagementNode(plugins=plugins, load_entry_points=False, data_dir=data_dir)
    with pytest.raises(NodeStartError) as info:
        await node.start()
    text = str(info.value)
    assert "zstack_node_start" in text and "'HookRecorder'" in text and "refusing to start" in text
    assert rec.events == ["hook:start"]  # no service started
    assert node.state == "Failed"


async def test_async_context_manager_stops_on_error(data_dir: Path) -> None:
    rec = Recorder()
    plugin = services_plugin("S", ordered_service(rec, "a", 10))
    node = ManagementNode(plugins=[plugin], load_entry_points=False, data_dir=data_dir)
    with pytest.raises(ValueError, match="inside"):
        async with node as entered:
            assert entered is node and node.state == "Running"
            raise ValueError("inside")
    assert node.state == "Stopped"
    assert rec.events == ["a:start", "a:stop"]


async def test_a_node_starts_once(data_dir: Path) -> None:
    async with ManagementNode(load_entry_points=False, data_dir=data_dir) as node:
        with pytest.raises(NodeStartError, match="once"):
            await node.start()


@attrs.define(kw_only=True)
class APIEchoMsg(APIMessage):
    SERVICE_ID = "echo"
    text: str


@attrs.define(kw_only=True)
class APIEchoEvent(APIEvent):
    text: str = ""
    thread: str = ""


class EchoService(Service):
    id = "echo"

    @handles(APIEchoMsg)
    async def echo(self, msg: APIEchoMsg) -> APIEchoEvent:
        await asyncio.sleep(0)
        return APIEchoEvent(text=msg.text.upper(), thread=threading.current_thread().name)


class EchoPlugin:
    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return [EchoService()]

    @hookimpl
    def zstack_api_messages(self) -> Sequence[ApiRegistration]:
        return [ApiRegistration(message=APIEchoMsg)]


def test_sync_node_from_plain_code(data_dir: Path) -> None:
    with SyncManagementNode(plugins=[EchoPlugin()], load_entry_points=False, data_dir=data_dir) as sync:
        assert sync.node is not None and sync.node.state == "Running"
        reply = sync.api_call("Echo", text="hello")
        assert reply.text == "HELLO"
        assert reply.thread == "zstack-node"  # handled on the node's own loop thread
        assert sync.call_api(APIEchoMsg(text="x")).text == "X"
        assert sync.run(sync.node.bus.call(APIEchoMsg(text="y"))).text == "Y"
    assert sync.node.state == "Stopped"
    assert not sync._thread.is_alive()


def test_sync_node_start_failure_raises_and_cleans_up(data_dir: Path) -> None:
    rec = Recorder()
    plugin = services_plugin("Bad", ordered_service(rec, "a", 10, fail=RuntimeError("nope")))
    sync = SyncManagementNode(plugins=[plugin], load_entry_points=False, data_dir=data_dir)
    with pytest.raises(NodeStartError, match="nope"):
        sync.start()
    assert not sync._thread.is_alive()


def test_cli_node_start_stops_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "cli-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    env["PYTHONUNBUFFERED"] = "1"
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen([str(ZSTACK), "--data-dir", str(data), "node", "start", "--port", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None
        reader = threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True)
        reader.start()
        try:
            ready = ""
            deadline = time.monotonic() + 30
            while "ready" not in ready and time.monotonic() < deadline and proc.poll() is None:
                try:
                    ready = lines.get(timeout=0.5)
                except queue.Empty:
                    pass
            assert "management node ready" in ready, f"no ready line; exit code {proc.poll()}: {stderr.read()}"
            assert str(data) in ready
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            reader.join(5)
            err = stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = "".join(lines.queue)
    assert proc.returncode == 0, err
    assert "stopping" in out
    assert "Traceback" not in err
    assert data.is_dir()


def test_cli_node_start_reports_a_bad_config(tmp_path: Path) -> None:
    data = tmp_path / "cli-data"
    data.mkdir()
    (data / "zstack.toml").write_text("[api]\nprot = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    result = subprocess.run([str(ZSTACK), "--data-dir", str(data), "node", "start"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "api.prot" in result.stderr and "api.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_plugins_json(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    assert zstack_main(["--data-dir", str(data_dir), "plugins", "--json"]) == 0
    report = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    for name, dist, service in [("kvm", "zstack-kvm", "compute"), ("storage", "zstack-storage", "storage"),
                                ("network", "zstack-network", "network")]:
        entry = report[name]
        assert entry["distribution"] == dist and entry["version"] == "0.1.0"
        assert entry["module"] == f"zstack_{name}.plugin"
        assert "zstack_services" in entry["hooks"] and "zstack_error_codes" in entry["hooks"]
        assert service in entry["services"]
        assert entry["disabled"] is False
    assert "L3" in report["network"]["error_code_prefixes"]


def test_cli_plugins_json_shows_disabled(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         data_dir: Path) -> None:
    monkeypatch.setenv("ZSTACK_DISABLE_PLUGINS", "kvm")
    assert zstack_main(["--data-dir", str(data_dir), "plugins", "--json"]) == 0
    report = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert report["kvm"]["disabled"] is True and report["kvm"]["services"] == []
    assert report["storage"]["disabled"] is False


def test_cli_plugins_text(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    assert zstack_main(["--data-dir", str(data_dir), "plugins"]) == 0
    out = capsys.readouterr().out
    assert "kvm: zstack-kvm 0.1.0" in out and "services: compute" in out


def test_cli_plugins_reports_a_broken_plugin(capsys: pytest.CaptureFixture[str], make_dist: MakeDist,
                                             data_dir: Path) -> None:
    make_dist("zstack-broken", "0.2", "broken", "raise RuntimeError('boom')\n")
    assert zstack_main(["--data-dir", str(data_dir), "plugins", "--json"]) == 2
    err = capsys.readouterr().err
    assert "zstack-broken 0.2" in err and "RuntimeError: boom" in err and "Traceback" not in err


async def test_stop_lets_inflight_calls_finish(data_dir: Path) -> None:
    finished = asyncio.Event()

    @attrs.define(kw_only=True)
    class SlowMsg(NeedReplyMessage):
        SERVICE_ID = "slow"

    class Slow(Service):
        id = "slow"

        @handles(SlowMsg)
        async def slow(self, msg: SlowMsg) -> None:
            await asyncio.sleep(0.05)
            finished.set()

    node = ManagementNode(plugins=[services_plugin("P", Slow())], load_entry_points=False, data_dir=data_dir)
    await node.start()
    node.bus.send(SlowMsg())
    await node.stop()
    assert finished.is_set()
