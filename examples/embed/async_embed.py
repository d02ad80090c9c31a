"""A management node embedded in an asyncio program.

The node runs on the program's own event loop, beside the program's other tasks, and the
program calls its APIs in-process: no HTTP, no session (an embedding program is trusted and acts
as the admin account). On the libvirt test driver by default, so it needs nothing installed::

    python examples/embed/async_embed.py [--data-dir DIR] [--libvirt-uri URI]

It builds a zone, a cluster and a KVM host and prints one JSON line describing them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile

from zstack_core import ManagementNode, ZStackError


async def heartbeat(beats: list[float]) -> None:
    """The program's own work, running while the node serves API calls."""
    loop = asyncio.get_running_loop()
    while True:
        beats.append(loop.time())
        await asyncio.sleep(0.01)


async def main(data_dir: str, libvirt_uri: str) -> dict[str, object]:
    beats: list[float] = []
    async with ManagementNode(data_dir=data_dir, settings={"node.libvirt_uri": libvirt_uri}) as node:
        ticker = asyncio.create_task(heartbeat(beats))
        zone = (await node.api_call("CreateZone", name="zone-1")).inventory
        cluster = (await node.api_call("CreateCluster", name="cluster-1", zoneUuid=zone.uuid)).inventory
        # AddKVMHost is a long API; in-process, api_call waits for it to finish.
        host = (await node.api_call("AddKVMHost", name="host-1", clusterUuid=cluster.uuid, url=libvirt_uri)).inventory
        try:
            await node.api_call("CreateCluster", name="orphan", zoneUuid="no-such-zone")
        except ZStackError as exc:  # every failure is an ErrorCode
            refused = exc.error.code
        hosts = await node.query.find("Host", [("clusterUuid", "=", cluster.uuid)])
        ticker.cancel()
    return {
        "zone": zone.name,
        "cluster": cluster.name,
        "hosts": [{"name": h.name, "status": h.status, "totalMemory": h.total_memory} for h in hosts],
        "host": host.uuid,
        "refused": refused,
        "heartbeats": len(beats),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="the node's data directory (default: a new temporary one)")
    parser.add_argument("--libvirt-uri", default="test:///default")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.data_dir or tempfile.mkdtemp(prefix="zstack-embed-"), args.libvirt_uri))))
