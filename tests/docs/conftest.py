"""Fixtures for the documentation tests: plugins installed as real distributions.

``install_plugin`` writes a ``*.dist-info`` directory (``METADATA`` and ``entry_points.txt``)
and the plugin's module into a directory put on ``sys.path``, so the node finds the plugin
through ``importlib.metadata`` exactly as it finds a wheel installed by pip, and the messages it
prints are the ones a user of that distribution would see.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

InstallPlugin = Callable[[str, str, str, str, str], None]


@pytest.fixture
def workspace_plugins() -> list[str]:
    """Entry-point names installed before the test (the workspace's services)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="zstack.plugins")})


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InstallPlugin]:
    """``install_plugin(distribution, version, entry_point, module, source)``."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)
    modules: list[str] = []
    sites: list[str] = []
    original = list(sys.path)

    def install(distribution: str, version: str, entry_point: str, module: str, source: str) -> None:
        # One directory per distribution, in install order at the front of sys.path: the order
        # the node meets them in is then fixed (a directory listing's order is not).
        site = tmp_path / f"site{len(sites)}"
        site.mkdir()
        sites.append(str(site))
        monkeypatch.setattr(sys, "path", [*sites, *original])
        info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[zstack.plugins]\n{entry_point} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        modules.append(module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)
