"""`zstack plugin new`: the generated distribution installs with pip, shows in `zstack plugins`,
and its own tests pass as generated."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from zstack_core import __version__
from zstack_core.cli import main
from zstack_core.scaffold import PluginNames, ScaffoldError, new_plugin
from zstack_core.testing import overlay_venv


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ZSTACK_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_names_derived_from_the_short_name() -> None:
    names = PluginNames("load-balancer")
    assert (names.name, names.distribution, names.package) == ("load-balancer", "zstack-load-balancer", "zstack_load_balancer")
    assert (names.camel, names.error_prefix, names.api) == ("LoadBalancer", "LOAD_BALANCER", "GetLoadBalancerStatus")
    assert PluginNames("zstack-quota").name == "quota"


def test_cli_writes_the_distribution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugin", "new", "hello", "--directory", str(tmp_path)]) == 0
    root = tmp_path / "zstack-hello"
    assert f"wrote {root}" in capsys.readouterr().out
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "src/zstack_hello/__init__.py", "src/zstack_hello/plugin.py",
                     "src/zstack_hello/py.typed", "tests/test_plugin.py"]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "zstack-hello"
    assert project["entry-points"]["zstack.plugins"] == {"hello": "zstack_hello.plugin"}
    major, minor = __version__.split(".")[:2]
    assert project["dependencies"] == [f"zstack-core>={major}.{minor},<{major}.{int(minor) + 1}"]
    assert 'pytest_plugins = ["zstack_core.testing"]' in (root / "tests" / "test_plugin.py").read_text()
    for source in root.rglob("*.py"):
        compile(source.read_text(), str(source), "exec")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Bad_Name", "invalid plugin name 'Bad_Name': use lower-case letters, digits and single hyphens"),
        ("a--b", "invalid plugin name 'a--b'"),
        ("9lives", "invalid plugin name '9lives'"),
        ("kvm", "a plugin named 'kvm' is already installed (distribution zstack-kvm)"),
    ],
)
def test_cli_refuses_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str) -> None:
    assert main(["plugin", "new", name, "--directory", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zstack: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "zstack-hello").mkdir()
    (tmp_path / "zstack-hello" / "mine.txt").write_text("keep me")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        new_plugin("hello", tmp_path)
    assert [p.name for p in (tmp_path / "zstack-hello").iterdir()] == ["mine.txt"]


def test_generated_plugin_installs_lists_and_passes_its_own_tests(tmp_path: Path) -> None:
    root = new_plugin("hello-world", tmp_path / "src")
    python = overlay_venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", str(root)], check=True, env=_env(), cwd=tmp_path, timeout=300)

    listed = subprocess.run([str(python), "-m", "zstack_core.cli", "--data-dir", str(tmp_path / "data"),
                             "plugins", "--json"], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    [plugin] = [p for p in json.loads(listed.stdout) if p["name"] == "hello-world"]
    assert plugin["distribution"] == "zstack-hello-world" and plugin["version"] == "0.1.0"
    assert plugin["module"] == "zstack_hello_world.plugin"
    assert plugin["services"] == ["hello-world"]
    assert plugin["apis"] == ["GetHelloWorldStatus"]
    assert plugin["error_code_prefixes"] == ["HELLO_WORLD"]
    assert plugin["global_configs"] == ["hello-world/enabled", "hello-world/greeting"]
    # Installed, not picked up from the source tree: the module lives in the new environment.
    where = subprocess.run([str(python), "-c", "import zstack_hello_world; print(zstack_hello_world.__file__)"],
                           capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60)
    assert where.stdout.startswith(str(tmp_path / "venv")), where

    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                           capture_output=True, text=True, env=_env(), cwd=root, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout, tests.stdout
