"""``virsh`` against the libvirtd the reliability tests run on: to see the domains as libvirt
reports them, independently of the node under test."""

from __future__ import annotations

import subprocess

__all__ = ["virsh", "zstack_domains"]


def virsh(uri: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stdout


def zstack_domains(uri: str) -> dict[str, str]:
    """Domain name -> ``virsh list --all`` state word of every ``zstack-`` domain on the host."""
    out = {}
    for line in virsh(uri, "list", "--all").splitlines()[2:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[1].startswith("zstack-"):
            out[parts[1]] = parts[2].strip()
    return out
