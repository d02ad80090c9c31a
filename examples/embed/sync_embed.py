"""A management node in a plain synchronous script.

``SyncManagementNode`` runs the node on an event loop in a background thread; every call blocks
until it is done, so no ``async``/``await`` is needed::

    python examples/embed/sync_embed.py [--data-dir DIR]

It creates a zone, changes a global config, reads both back and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from zstack_core import SyncManagementNode, ZStackError


def main(data_dir: str) -> dict[str, object]:
    with SyncManagementNode(data_dir=data_dir) as node:
        zone = node.api_call("CreateZone", name="zone-1", description="made by a script").inventory
        node.api_call("UpdateGlobalConfig", category="kvm", name="vm.migrationQuantity", value=4)
        zones = node.api_call("QueryZone", conditions=[{"name": "name", "op": "=", "value": "zone-1"}]).inventories
        config = node.api_call("QueryGlobalConfig", conditions=[{"name": "category", "op": "=", "value": "kvm"},
                                                                 {"name": "name", "op": "=", "value": "vm.migrationQuantity"}])
        try:
            node.api_call("UpdateGlobalConfig", category="kvm", name="vm.migrationQuantity", value="many")
        except ZStackError as exc:
            refused = exc.error.code
    return {"zone": zone.name, "zones": [z.uuid for z in zones], "migrationQuantity": config.inventories[0].value,
            "refused": refused}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="the node's data directory (default: a new temporary one)")
    args = parser.parse_args()
    print(json.dumps(main(args.data_dir or tempfile.mkdtemp(prefix="zstack-embed-"))))
