"""``qemu-img`` on files of this machine: what an image really is, and qcow2 internal snapshots.

Blocking: call from a worker thread. Failures raise ``ZStackError`` (``VOLUME.1004`` when
``qemu-img`` is missing, ``VOLUME.1006`` when it refuses) carrying qemu-img's own message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from zstack_core import ErrorCodeSpace

from .errors import VolumeErrors

__all__ = ["available", "info", "snapshot", "snapshot_names"]

_TIMEOUT = 120


def available() -> bool:
    return shutil.which("qemu-img") is not None


def _run(args: list[str], space: ErrorCodeSpace = VolumeErrors) -> str:
    if not available():
        raise space.exc("1004", "qemu-img is not installed on this machine")
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=_TIMEOUT)
    if result.returncode != 0:
        raise VolumeErrors.exc("1006", f"qemu-img {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def info(path: str) -> dict[str, Any]:
    """``qemu-img info --output=json``: ``format``, ``virtual-size``, ``backing-filename``..."""
    # -U: the file may be open by a running VM; reading its header is still safe.
    return json.loads(_run(["info", "-U", "--output=json", path]))  # type: ignore[no-any-return]


def snapshot(path: str, action: str, name: str) -> None:
    """Create (``-c``), revert to (``-a``) or delete (``-d``) the internal snapshot ``name``."""
    flag = {"create": "-c", "revert": "-a", "delete": "-d"}[action]
    _run(["snapshot", flag, name, path])


def snapshot_names(path: str) -> list[str]:
    return [s["name"] for s in info(path).get("snapshots", [])]
