"""The network service's database work per VM create does not grow with the VMs already on the
L3 network (the scale benchmark's 10,000 VMs on one L3 network).

Every SQL statement peewee logs during one ``CreateVmInstance`` is attributed to the service
whose code issued it; the network service's count and the rows its statements return must be
the same for the 4th VM of an L3 network as for the 40th, and IPAM must not read the used
addresses of the network wholesale. Through the node with zstack-kvm on the test driver. About 5 s.
"""

from __future__ import annotations

import logging
import traceback
from . import test_with_compute
from .test_with_compute import Cloud

cloud = test_with_compute.cloud  # the fixture, shared


class _Statements(logging.Handler):
    """The SQL statements logged while recording, with the zstack_network frame that issued each."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.recording = False
        self.network: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not self.recording:
            return
        frame = next((f for f in reversed(traceback.extract_stack())
                      if "/zstack_network/" in f.filename and not f.filename.endswith("prepared.py")), None)
        if frame is not None:
            sql = record.msg[0] if isinstance(record.msg, tuple) else str(record.msg)
            self.network.append((f"{frame.filename.rsplit('/', 1)[-1]}:{frame.name}", sql))


async def _one_create(c: Cloud, l3_uuid: str, statements: _Statements) -> list[tuple[str, str]]:
    statements.network = []
    statements.recording = True
    try:
        await c.vm([l3_uuid])
    finally:
        statements.recording = False
    return statements.network


async def test_network_statements_per_create_do_not_grow_with_the_vms_on_the_l3(cloud: Cloud) -> None:
    _, l3 = await cloud.l3("10.92.0.0/24")
    statements = _Statements()
    logger = logging.getLogger("peewee")
    old_level = logger.level
    logger.addHandler(statements)
    logger.setLevel(logging.DEBUG)
    try:
        for _ in range(3):
            await cloud.vm([l3.uuid])
        early = await _one_create(cloud, l3.uuid, statements)
        for _ in range(35):
            await cloud.vm([l3.uuid])
        late = await _one_create(cloud, l3.uuid, statements)
    finally:
        logger.removeHandler(statements)
        logger.setLevel(old_level)
    print(f"\nnetwork statements per VM create: {len(early)} (4th VM), {len(late)} (40th VM)")
    for where, sql in late:
        print(f"  {where:40s} {sql[:100]}")
    assert [w for w, _ in early] == [w for w, _ in late]
    # No statement reads the used addresses of the L3 network without a bound.
    used_reads = [sql for _, sql in late if 'FROM "used_ip"' in sql and "SELECT" in sql]
    assert used_reads and all("LIMIT" in sql or '"ip_int" = ' in sql or "IN (" in sql for sql in used_reads), used_reads
    # Nor every NIC of it (the DHCP server learns one entry per NIC).
    assert not [sql for _, sql in late if 'FROM "vm_nic"' in sql and "SELECT" in sql]
    assert len(late) <= 25, len(late)
