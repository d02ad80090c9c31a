"""Fixtures for the kernel tests: an isolated environment and throwaway plugin distributions.

``make_dist`` writes a real installed distribution (a ``*.dist-info`` directory with
``METADATA`` and ``entry_points.txt``, plus its module) into a directory put on ``sys.path``,
so the node discovers it through ``importlib.metadata`` exactly as it would a wheel installed
by pip.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``ZSTACK_*`` variable leaks in from the developer's shell; data stays in tmp_path."""
    for var in list(os.environ):
        if var.startswith("ZSTACK_"):
            monkeypatch.delenv(var)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ZSTACK_NODE_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def data_dir(isolated_env: Path) -> Path:
    return isolated_env


MakeDist = Callable[..., str]


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeDist]:
    """``make_dist(name, version, entry_point, source) -> module name``.

    Installs distribution ``name`` ``version`` whose ``zstack.plugins`` entry point
    ``entry_point`` names a fresh module with ``source``. Module names are unique per call so a
    module imported by one test is never the one another test sees.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def make(name: str, version: str, entry_point: str, source: str) -> str:
        module = f"zstest_{entry_point}_{uuid.uuid4().hex[:8]}"
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[zstack.plugins]\n{entry_point} = {module}\n")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()  # the site directory changed since it went on sys.path
        modules.append(module)
        return module

    yield make
    for module in modules:
        sys.modules.pop(module, None)


KERNEL_PLUGIN = "zstack_core"
"""The kernel registers its own services (global configs, tags, query) as a built-in plugin."""


def plugin_services(node: Any) -> set[str]:
    """Service ids provided by plugins other than the kernel's built-in one."""
    return {sid for sid, owner in node.service_owner.items() if owner != KERNEL_PLUGIN}


def plugin_names(node: Any) -> list[str]:
    """Names of the plugins the node knows, besides the kernel's built-in ones (``zstack_core``
    and the cluster layer, ``zstack_core.cluster``)."""
    return [name for name, info in node.plugins.infos.items() if not info.builtin]
