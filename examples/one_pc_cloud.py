"""One PC can run a cloud: from nothing to a running VM, through the HTTP API.

    python examples/one_pc_cloud.py [--libvirt-uri URI] [--data-dir DIR] [--physical-interface IF]

Starts a management node (``zstack node start``, as an operator would), then, as a client of its
HTTP API through the Python SDK, builds a zone, a cluster, a KVM host, local primary storage, an
image, an L2 network with an L3 network and an IP range, and a VM with a root volume and a NIC.
The VM's inventory is printed last, as one JSON line on standard output (progress goes to
standard error). Then the node stops, and the VM keeps running: VMs outlive the control plane.

By default the host is libvirt's test driver (``test:///default``): nothing is installed or
touched, and the VM lives only as long as the node's process. With ``--libvirt-uri
qemu:///system`` the VM is a real QEMU/KVM domain (64 MiB, booting nothing) that keeps running
after the script ends (``virsh list``); the L2 network then bridges ``--physical-interface``
(an interface without IPv4 addresses: the node refuses to take one that carries them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from zstack_core.sdk import Client

ADMIN_PASSWORD = "password"
"""The admin password the node gets at its first start (ZStack's default); ``ZSTACK_ADMIN_PASSWORD`` wins."""


def say(text: str) -> None:
    print(f"one-pc-cloud: {text}", file=sys.stderr, flush=True)


class Node:
    """``zstack node start`` in a child process, until :meth:`stop`."""

    def __init__(self, data_dir: Path, libvirt_uri: str, password: str) -> None:
        env = {**os.environ, "ZSTACK_ADMIN_PASSWORD": password}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zstack_core.cli", "--data-dir", str(data_dir), "node", "start",
             "--port", "0", "--libvirt-uri", libvirt_uri],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env)
        self.lines: list[str] = []
        ready = threading.Event()
        self.url = ""

        def pump() -> None:  # keep reading, so the node never blocks on a full pipe
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                found = re.search(r"HTTP API at (http://\S+)", line)
                if found and not ready.is_set():
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(120) or not self.url:
            self.stop()
            raise SystemExit("the node did not start:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def blank_image(path: Path, size: int = 8 << 20) -> Path:
    """A raw disk image of zeros (sparse): a VM booting nothing needs nothing more."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


def build_cloud(client: Client, *, libvirt_uri: str, data_dir: Path, image_url: str,
                physical_interface: str, cidr: str) -> dict[str, Any]:
    """Zone -> cluster -> host -> primary storage -> image -> L2/L3 -> VM; return the VM."""

    def call(api: str, **params: Any) -> dict[str, Any]:
        reply = client.call(api, **params)
        return dict(reply.get("inventory") or {})

    zone = call("CreateZone", name="zone-1", description="one PC")
    cluster = call("CreateCluster", name="cluster-1", zoneUuid=zone["uuid"], hypervisorType="KVM")
    say(f"zone {zone['uuid']}, cluster {cluster['uuid']}")
    host = call("AddKVMHost", name="this-pc", clusterUuid=cluster["uuid"], url=libvirt_uri)
    say(f"host {host['uuid']} {host['status']}: {host['availableMemory'] >> 20} MiB free")
    ps = call("AddLocalPrimaryStorage", name="local-1", zoneUuid=zone["uuid"], url=str(data_dir / "primary-storage"))
    client.call("AttachPrimaryStorageToCluster", primaryStorageUuid=ps["uuid"], clusterUuid=cluster["uuid"])
    image = call("AddImage", name="blank", url=image_url, format="raw")
    say(f"primary storage {ps['uuid']}, image {image['uuid']} ({image['size'] >> 20} MiB)")
    l2 = call("CreateL2NoVlanNetwork", name="l2-1", zoneUuid=zone["uuid"], physicalInterface=physical_interface)
    client.call("AttachL2NetworkToCluster", l2NetworkUuid=l2["uuid"], clusterUuid=cluster["uuid"])
    l3 = call("CreateL3Network", name="l3-1", l2NetworkUuid=l2["uuid"])
    ip_range = call("AddIpRangeByNetworkCidr", l3NetworkUuid=l3["uuid"], networkCidr=cidr)
    say(f"L2 {l2['uuid']} on {physical_interface}, L3 {l3['uuid']} with {ip_range['startIp']}-{ip_range['endIp']}")
    vm = call("CreateVmInstance", name="vm-1", cpuNum=1, memorySize=64 << 20, imageUuid=image["uuid"],
              l3NetworkUuids=[l3["uuid"]], progress=lambda pct: say(f"creating vm-1: {pct}%") if pct else None)
    say(f"VM {vm['uuid']} is {vm['state']} on host {vm['hostUuid']}")
    return vm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libvirt-uri", default="test:///default", help="libvirt URI of this PC (default: test driver)")
    parser.add_argument("--data-dir", default=None, help="the node's data directory (default: a new temporary one)")
    parser.add_argument("--physical-interface", default="eth0", help="interface the L2 network bridges")
    parser.add_argument("--cidr", default="192.168.111.0/24", help="subnet of the VM's L3 network")
    parser.add_argument("--image", default=None, help="URL or path of the VM's image (default: a blank raw disk)")
    args = parser.parse_args(argv)

    if args.data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="zstack-one-pc-"))
        data_dir.chmod(0o755)  # QEMU runs as its own user (libvirt-qemu) and must reach the volumes
    else:
        data_dir = Path(args.data_dir).resolve()
    password = os.environ.get("ZSTACK_ADMIN_PASSWORD", ADMIN_PASSWORD)
    image_url = args.image or str(blank_image(data_dir / "images" / "blank.raw"))
    say(f"starting a management node (data in {data_dir}, libvirt {args.libvirt_uri})")
    node = Node(data_dir, args.libvirt_uri, password)
    try:
        say(f"node ready at {node.url}")
        with Client(node.url) as client:
            client.login("admin", password)
            vm = build_cloud(client, libvirt_uri=args.libvirt_uri, data_dir=data_dir, image_url=image_url,
                             physical_interface=args.physical_interface, cidr=args.cidr)
    finally:
        node.stop()
    if args.libvirt_uri.startswith("test:"):
        say("node stopped (on the test driver the VM lived in the node's process)")
    else:
        say("node stopped; the VM keeps running")
    print(json.dumps(vm, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
