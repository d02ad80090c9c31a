"""examples/embed/: a node embedded in an async program, in a synchronous script, and the HTTP
API mounted into another ASGI application. Each example runs as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from zstack_core.sdk import Client, ZStackApiError

ROOT = Path(__file__).resolve().parents[2]
EMBED = ROOT / "examples" / "embed"
PASSWORD = "embed-example-password"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    env["ZSTACK_ADMIN_PASSWORD"] = PASSWORD
    return env


def run_example(name: str, *args: str, cwd: Path) -> dict[str, object]:
    result = subprocess.run([sys.executable, str(EMBED / name), *args], capture_output=True, text=True,
                            cwd=cwd, env=_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_async_embed(tmp_path: Path) -> None:
    out = run_example("async_embed.py", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert out["zone"] == "zone-1" and out["cluster"] == "cluster-1"
    assert out["hosts"] == [{"name": "host-1", "status": "Connected", "totalMemory": out["hosts"][0]["totalMemory"]}]  # type: ignore[index]
    assert isinstance(out["refused"], str) and "." in out["refused"]  # an ErrorCode, not a traceback
    # The program's own task kept running on the loop the node shares.
    assert isinstance(out["heartbeats"], int) and out["heartbeats"] >= 2
    assert (tmp_path / "data" / "zstack.db").exists()


def test_sync_embed(tmp_path: Path) -> None:
    out = run_example("sync_embed.py", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert out["zone"] == "zone-1" and len(out["zones"]) == 1  # type: ignore[arg-type]
    assert out["migrationQuantity"] == "4"
    assert out["refused"] == "SYS.1007"


def test_sync_embed_keeps_its_data_across_runs(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = run_example("sync_embed.py", "--data-dir", data, cwd=tmp_path)
    second = run_example("sync_embed.py", "--data-dir", data, cwd=tmp_path)
    assert len(second["zones"]) == 2 and first["zones"][0] in second["zones"]  # type: ignore[index,arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_asgi_mount(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(EMBED / "asgi_mount.py"), "--port", str(port),
                             "--data-dir", str(tmp_path / "data")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/cloud/v1/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the portal did not come up in 60 s"
            time.sleep(0.1)

        home = requests.get(f"{base}/", timeout=10).json()
        assert home == {"app": "portal", "cloud": "/cloud", "node": "Running", "zones": []}

        with Client(f"{base}/cloud") as client:
            try:
                client.call("CreateZone", name="refused")
            except ZStackApiError as exc:
                assert exc.code == "SYS.1013" and exc.status == 401  # the mounted API wants a session too
            else:
                raise AssertionError("CreateZone without a session was accepted")
            client.login("admin", PASSWORD)
            zone = client.call("CreateZone", name="zone-over-http")["inventory"]
            [found] = client.query("Zone", [("uuid", "=", zone["uuid"])])
            assert found["name"] == "zone-over-http"

        # The portal and the API share one node.
        assert requests.get(f"{base}/", timeout=10).json()["zones"] == ["zone-over-http"]
        # Its own routes and the node's do not shadow each other.
        missing = requests.get(f"{base}/cloud/v1/no-such-thing", timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "SYS.1008"
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    # uvicorn shuts down cleanly (the lifespan stops the node), then ends the process by the
    # signal it caught, as a process killed by SIGTERM would end.
    assert proc.returncode == -signal.SIGTERM, output
    assert output.splitlines()[-1] == "portal: node stopped", output
    assert "Traceback" not in output
