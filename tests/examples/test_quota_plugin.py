"""examples/zstack-quota, a third-party plugin, installs with pip into a fresh virtual
environment, `zstack plugins` shows what it registers, and its own tests pass there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from zstack_core.testing import overlay_venv

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "zstack-quota"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ZSTACK_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(python of a new environment with zstack-quota installed, a copy of the example)."""
    base = tmp_path_factory.mktemp("quota")
    # A copy: building writes build/ and *.egg-info next to the sources.
    source = base / "zstack-quota"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info",
                                                                   ".pytest_cache"))
    python = overlay_venv(base / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", str(source)], check=True, env=_env(), cwd=base, timeout=300)
    yield python, source


def test_zstack_plugins_lists_it(installed: tuple[Path, Path], tmp_path: Path) -> None:
    python, _ = installed
    result = subprocess.run([str(python), "-m", "zstack_core.cli", "--data-dir", str(tmp_path / "data"),
                             "plugins", "--json"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    [quota] = [p for p in json.loads(result.stdout) if p["name"] == "quota"]
    assert (quota["distribution"], quota["version"], quota["module"]) == ("zstack-quota", "0.1.0", "zstack_quota.plugin")
    assert quota["services"] == ["quota"]
    assert quota["apis"] == ["GetQuotaUsage"]
    assert quota["error_code_prefixes"] == ["QUOTA"]
    assert quota["global_configs"] == ["quota/vm.num"]
    assert quota["system_tags"] == ["quota::vm::{num}"]
    assert {"zstack_api_interceptors", "zstack_models", "zstack_vm_create_check", "zstack_vm_state_changed",
            "zstack_vm_release_resource"} <= set(quota["hooks"])
    # It came from the new environment's site-packages, not from the work tree.
    where = subprocess.run([str(python), "-c", "import zstack_quota; print(zstack_quota.__file__)"],
                           capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)
    assert where.stdout.startswith(str(python.parent.parent)), where


def test_its_own_tests_pass(installed: tuple[Path, Path]) -> None:
    python, source = installed
    # The installed package is what the tests import: the sources are moved out of the way.
    shutil.rmtree(source / "src")
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            capture_output=True, text=True, env=_env(), cwd=source, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout
