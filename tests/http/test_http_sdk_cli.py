"""The SDK and the ``zstack`` CLI drive scenarios against a node started by the test."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zstack_core.sdk import Client, ZStackApiError

ZSTACK = [sys.executable, "-m", "zstack_core.cli"]


def admin_password(server: Any) -> str:
    return str(server.node.properties["identity.admin_password"])


def test_sdk_scenario(server: Any) -> None:
    with Client(server.url) as client:
        session = client.login("admin", admin_password(server))
        assert session["accountUuid"]
        w = client.call("CreateWidget", name="sdk", size=10, labels=["a"], system_tags=["color::green"])["inventory"]
        assert client.call("StartWidget", uuid=w["uuid"])["inventory"]["state"] == "Running"
        seen: list[int | None] = []
        built = client.call("BuildWidget", uuid=w["uuid"], steps=3, step_seconds=0.05, progress=seen.append)
        assert built["inventory"]["size"] == 11 and seen[-1] == 100
        assert client.call("GetWidgetSize", uuid=w["uuid"], unit="KiB") == {"size": 11, "unit": "KiB"}
        assert [i["uuid"] for i in client.query("Widget", ["size>10", ("name", "=", "sdk")])] == [w["uuid"]]
        assert client.query("Widget", {"uuid": w["uuid"]}, count=True) == 1
        inventories, total = client.query("Widget", [("uuid", "in", [w["uuid"], "0" * 32])], reply_with_count=True)
        assert total == 1 and inventories[0]["uuid"] == w["uuid"]
        with pytest.raises(ZStackApiError) as info:
            client.call("StartWidget", uuid=w["uuid"])
        assert info.value.code == "WIDGET.1000" and info.value.status == 409
        with pytest.raises(ZStackApiError) as info:
            client.call("BuildWidget", uuid=w["uuid"], steps=2, step_seconds=0.01, fail=True)
        assert info.value.error.caused("SYS.1011")
        with pytest.raises(ZStackApiError) as info:
            client.call("CreateWidget", name="x", size="big")
        assert info.value.code == "SYS.1007" and info.value.error.opaque["field"] == "$.size"
        with pytest.raises(ZStackApiError) as info:
            client.call("CreateWidgett", name="x")
        assert info.value.code == "SYS.1008" and "CreateWidget" in info.value.error.details
        client.call("DeleteWidget", uuid=w["uuid"], delete_mode="Enforcing")
        assert client.query("Widget", {"uuid": w["uuid"]}) == []
        kept = client.session_uuid
    # leaving the block logged out
    r = server.request("GET", f"/v1/accounts/sessions/{kept}/valid")
    assert r.json()["valid"] is False


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    environ |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")} | (env or {})
    return subprocess.run([*ZSTACK, *args], capture_output=True, text=True, timeout=timeout, env=environ,
                          stdin=subprocess.DEVNULL)


def test_cli_scenario(server: Any, tmp_path: Path) -> None:
    r = run_cli(tmp_path, "login", "--url", server.url, "--account", "admin", env={"ZSTACK_PASSWORD": admin_password(server)})
    assert r.returncode == 0, r.stderr
    session_file = tmp_path / ".config" / "zstack" / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert json.loads(session_file.read_text())["url"] == server.url
    # values parsed by the message schema: int, float, bool, list (comma and JSON), object (JSON)
    r = run_cli(tmp_path, "api", "CreateWidget", "name=cli", "size=2048", "weight=2.5", "enabled=false",
                "labels=a,b", 'parts=[{"name": "gear", "count": 2}]', 'spec={"k": 1}', "--json")
    assert r.returncode == 0, r.stderr
    widget = json.loads(r.stdout)["inventory"]
    assert (widget["size"], widget["weight"], widget["enabled"]) == (2048, 2.5, False)
    # table output by default
    r = run_cli(tmp_path, "query", "Widget", f"uuid={widget['uuid']}", "size>1024")
    assert r.returncode == 0, r.stderr
    header, rule, row = r.stdout.splitlines()[:3]
    assert header.split() == ["uuid", "name", "size", "weight", "enabled", "state", "linkedUuid"]
    assert row.split()[:3] == [widget["uuid"], "cli", "2048"]
    r = run_cli(tmp_path, "query", "Widget", "name=cli", "--count")
    assert r.returncode == 0 and int(r.stdout) >= 1
    # a long API with a progress bar on stderr
    r = run_cli(tmp_path, "api", "BuildWidget", f"uuid={widget['uuid']}", "steps=4", "stepSeconds=0.1")
    assert r.returncode == 0, r.stderr
    assert re.search(r"BuildWidget \[#+\.*\]\s+\d+%", r.stderr) and "100%" in r.stderr
    assert re.search(r"size\s+2049", r.stdout)
    # failures: non-zero exit with the ErrorCode (and its cause) on stderr
    r = run_cli(tmp_path, "api", "BuildWidget", f"uuid={widget['uuid']}", "steps=2", "stepSeconds=0.01", "fail=true")
    assert r.returncode == 1 and "WIDGET.1001" in r.stderr and "caused by SYS.1011" in r.stderr
    r = run_cli(tmp_path, "api", "NoSuchApi")
    assert r.returncode == 1 and "SYS.1008" in r.stderr
    r = run_cli(tmp_path, "api", "CreateWidget", "name=x", "size=lots")
    assert r.returncode == 2 and "size" in r.stderr
    r = run_cli(tmp_path, "query", "Widget", "nosuch=1")
    assert r.returncode == 1 and "SYS.1007" in r.stderr
    # logged out: the next call says how to log in
    assert run_cli(tmp_path, "logout").returncode == 0
    r = run_cli(tmp_path, "query", "Widget")
    assert r.returncode == 1 and "SYS.1013" in r.stderr and "zstack login" in r.stderr
    r = run_cli(tmp_path, "login", "--url", server.url, "--password", "wrong")
    assert r.returncode == 1 and "ID.1000" in r.stderr
    r = run_cli(tmp_path, "query", "Widget", "--url", "http://127.0.0.1:9")
    assert r.returncode == 3 and "cannot reach" in r.stderr


def test_node_start_serves_http(tmp_path: Path) -> None:
    """``zstack node start`` binds the configured address and serves the API until SIGTERM."""
    data = tmp_path / "data"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    environ |= {"ZSTACK_ADMIN_PASSWORD": "node-start-pw", "HOME": str(tmp_path),
                "XDG_CONFIG_HOME": str(tmp_path / ".config"), "ZSTACK_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen([*ZSTACK, "--data-dir", str(data), "node", "start", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"HTTP API at (http://127\.0\.0\.1:\d+)", line)
        assert match, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        url = match.group(1)
        r = run_cli(tmp_path, "login", "--url", url, "--password", "node-start-pw")
        assert r.returncode == 0, r.stderr
        r = run_cli(tmp_path, "query", "Account", "--json")
        assert [a["name"] for a in json.loads(r.stdout)["inventories"]] == ["admin"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


COMPUTE_APIS = ("CreateZone", "CreateCluster", "AddKVMHost", "CreateVmInstance")


def test_compute_scenario_zone_cluster_host_vm(server: Any, tmp_path: Path) -> None:
    """zone -> cluster -> host on the libvirt test driver -> VM, through the SDK and the CLI."""
    missing = [n for n in COMPUTE_APIS if n not in server.node.api.registrations]
    if missing:
        pytest.skip(f"zstack-kvm does not register {', '.join(missing)} yet: the compute scenario needs them")
    with Client(server.url) as client:
        client.login("admin", admin_password(server))
        zone = client.call("CreateZone", name="zone-1")["inventory"]
        cluster = client.call("CreateCluster", zone_uuid=zone["uuid"], name="cluster-1")["inventory"]
        host = client.call("AddKVMHost", name="host-1", cluster_uuid=cluster["uuid"], url="test:///default")["inventory"]
        assert host["status"] == "Connected"
    r = run_cli(tmp_path, "login", "--url", server.url, "--password", admin_password(server))
    assert r.returncode == 0, r.stderr
    r = run_cli(tmp_path, "api", "CreateVmInstance", "name=vm-1", "cpuNum=1", f"memorySize={64 * 1024 * 1024}",
                f"hostUuid={host['uuid']}", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    vm = json.loads(r.stdout)["inventory"]
    assert vm["state"] == "Running" and vm["hostUuid"] == host["uuid"]
    r = run_cli(tmp_path, "query", "VmInstance", f"uuid={vm['uuid']}", "--json")
    assert json.loads(r.stdout)["inventories"][0]["state"] == "Running"
