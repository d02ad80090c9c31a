"""The four distributions are real wheels, and a subset of them works on its own.

Builds the four wheels from copies of src/zstack_*/ (so the work tree gets no build/ or
egg-info), then installs zstack-core + zstack-network alone into a fresh virtual environment:
`zstack plugins --json` must list network only, and `zstack node start` must come up and stop
cleanly on SIGTERM. Slow (about a minute): deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {  # distribution -> import package
    "zstack-core": "zstack_core",
    "zstack-kvm": "zstack_kvm",
    "zstack-storage": "zstack_storage",
    "zstack-network": "zstack_network",
}
SERVICES = {"zstack-kvm": "kvm", "zstack-storage": "storage", "zstack-network": "network"}
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point the subset venv at the work tree."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("ZSTACK_")}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    sources = tmp_path_factory.mktemp("sources")
    out = tmp_path_factory.mktemp("wheels")
    ignore = shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info")
    dirs = []
    for package in PACKAGES.values():
        shutil.copytree(ROOT / "src" / package, sources / package, ignore=ignore)
        dirs.append(str(sources / package))
    subprocess.run([sys.executable, *PIP, "wheel", "-q", "--no-deps", "-w", str(out), *dirs],
                   check=True, env=_clean_env(), timeout=600)
    built = {}
    for dist, package in PACKAGES.items():
        [wheel] = out.glob(f"{package}-*.whl")
        built[dist] = wheel
    return built


def _metadata(wheel: Path) -> tuple[list[str], str, str]:
    """(file names, METADATA text, entry_points.txt text) of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        try:
            entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        except KeyError:
            entry_points = ""
    return names, metadata, entry_points


@pytest.mark.parametrize("dist", list(PACKAGES))
def test_wheel_holds_its_own_package_whole_and_nothing_else(wheels: dict[str, Path], dist: str) -> None:
    package = PACKAGES[dist]
    names, _, _ = _metadata(wheels[dist])
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {package}
    # Every module of the source tree is in the wheel (a subpackage missing from
    # `packages = [...]` in its pyproject.toml would be silently left out).
    src = ROOT / "src" / package
    expected = {
        f"{package}/{p.relative_to(src).as_posix()}"
        for p in src.rglob("*.py")
        if not ({"build", "dist", "__pycache__"} & set(p.relative_to(src).parts))
        and not any(part.endswith(".egg-info") for part in p.relative_to(src).parts)
    }
    assert expected - set(names) == set()
    assert f"{package}/py.typed" in names


def test_entry_points(wheels: dict[str, Path]) -> None:
    _, _, core_eps = _metadata(wheels["zstack-core"])
    assert "[console_scripts]" in core_eps
    assert "zstack = zstack_core.cli:main" in core_eps
    assert "[zstack.plugins]" not in core_eps
    for dist, name in SERVICES.items():
        _, _, eps = _metadata(wheels[dist])
        section = eps.split("[zstack.plugins]", 1)[1].split("[", 1)[0] if "[zstack.plugins]" in eps else ""
        entries = [line.strip() for line in section.splitlines() if line.strip()]
        assert entries == [f"{name} = {PACKAGES[dist]}.plugin"], eps


@pytest.mark.parametrize("dist", list(SERVICES))
def test_service_depends_on_core_and_on_no_other_service(wheels: dict[str, Path], dist: str) -> None:
    _, metadata, _ = _metadata(wheels[dist])
    requires = [Requirement(v) for v in Parser().parsestr(metadata).get_all("Requires-Dist") or []]
    names = {r.name.lower().replace("_", "-") for r in requires}
    assert "zstack-core" in names
    assert names & (set(SERVICES) - {dist}) == set()


def test_core_depends_on_no_service(wheels: dict[str, Path]) -> None:
    _, metadata, _ = _metadata(wheels["zstack-core"])
    requires = [Requirement(v) for v in Parser().parsestr(metadata).get_all("Requires-Dist") or []]
    assert {r.name.lower().replace("_", "-") for r in requires} & set(SERVICES) == set()


@pytest.fixture(scope="module")
def core_and_network(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with only zstack-core and zstack-network installed."""
    venv = tmp_path_factory.mktemp("venv-core-network")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), *PIP, "install", "-q",
                    str(wheels["zstack-core"]), str(wheels["zstack-network"])],
                   check=True, env=_clean_env(), timeout=900)
    return venv


def test_subset_lists_network_only(core_and_network: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(core_and_network / "bin" / "zstack"), "--data-dir", str(tmp_path / "data"),
                             "plugins", "--json"],
                            capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    plugins = json.loads(result.stdout)
    assert [(p["name"], p["distribution"]) for p in plugins] == [("network", "zstack-network")]
    # The installed distribution, not the work tree, is what answered.
    check = subprocess.run([str(core_and_network / "bin" / "python"), "-c",
                            "import zstack_core, zstack_network; print(zstack_core.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=60)
    assert check.returncode == 0, check.stderr
    assert str(core_and_network) in check.stdout
    for absent in ("zstack_kvm", "zstack_storage"):
        missing = subprocess.run([str(core_and_network / "bin" / "python"), "-c", f"import {absent}"],
                                 capture_output=True, cwd=tmp_path, env=_clean_env(), timeout=60)
        assert missing.returncode != 0


def test_subset_node_starts_and_stops_on_sigterm(core_and_network: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(core_and_network / "bin" / "zstack"), "--data-dir", str(tmp_path / "data"),
                             "node", "start"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, cwd=tmp_path, env=_clean_env())
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not any("management node ready" in line for line in seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail("no 'management node ready' within 60 s:\n" + "".join(seen))
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"node exited ({proc.wait()}) before it was ready:\n" + "".join(seen))
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    while (line := lines.get_nowait() if not lines.empty() else None) is not None:
        seen.append(line)
    assert code == 0, "".join(seen)
    assert "Traceback" not in "".join(seen)
