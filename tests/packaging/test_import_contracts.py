"""The rule that makes it ZStack: no service imports another, the kernel imports no service.

The contracts live in the root pyproject.toml ([tool.importlinter]); these tests run
import-linter on the real source, and on a copy with a deliberate violation to show the
contracts would catch one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
SERVICES = ["zstack_kvm", "zstack_storage", "zstack_network"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(LINT_IMPORTS), "--config", str(PYPROJECT), "--no-cache"],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_both_contracts_are_declared() -> None:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == {"zstack_core", *SERVICES}
    contracts = {c["type"]: c for c in config["contracts"]}
    assert sorted(contracts["independence"]["modules"]) == sorted(SERVICES)
    assert contracts["forbidden"]["source_modules"] == ["zstack_core"]
    assert sorted(contracts["forbidden"]["forbidden_modules"]) == sorted(SERVICES)


def test_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("package", "imported", "contract"),
    [
        ("zstack_network", "zstack_storage", "Services are independent of each other"),
        ("zstack_kvm", "zstack_network", "Services are independent of each other"),
        ("zstack_core", "zstack_kvm", "The kernel imports no service"),
    ],
)
def test_a_violation_is_caught(tmp_path: Path, package: str, imported: str, contract: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info")
    for name in ("zstack_core", *SERVICES):
        shutil.copytree(ROOT / "src" / name, tmp_path / name, ignore=ignore)
    (tmp_path / package / "_violation.py").write_text(f"import {imported}\n")

    result = lint_imports(tmp_path, pythonpath=tmp_path)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout + result.stderr
    assert f"{package}._violation" in result.stdout
