"""Case 5: ``QueryVmInstance`` over 100,000 VM rows beside the same query in peewee.

The rows are inserted directly through compute's model in bulk (not through the API: this case
measures the query, not creation). 10 hosts, two states, 1-8 CPUs, spread creation times.

The query: three conditions (``state = Running``, ``hostUuid = <one of 10>``, ``cpuNum >= 4``:
about 2,500 matches), sorted by ``createdAt`` descending, first 100. Through the node
(``node.api.call`` in-process: the API pipeline, the query engine's validation and SQL, and
inventories with each VM's NICs and volumes) beside the same SELECT written directly in peewee
and run in the node's database thread (the same SQL; model instances, no inventories). Median of
repeats, the two sides alternating.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, median  # noqa: E402
from scale import ADMIN_PASSWORD  # noqa: E402

FULL_ROWS = 100_000
QUICK_ROWS = 10_000
HOSTS = 10
LIMIT = 100


def fake_rows(n: int, hosts: list[str], zone: str, cluster: str) -> list[dict[str, Any]]:
    epoch = datetime.datetime(2026, 1, 1)
    rows = []
    for i in range(n):
        created = epoch + datetime.timedelta(seconds=i * 7 % n)  # not in insertion order
        rows.append({
            "uuid": uuid.uuid4().hex, "created_at": created, "updated_at": created, "name": f"vm-{i}",
            "description": "", "state": "Running" if i % 2 else "Stopped", "zone_uuid": zone,
            "cluster_uuid": cluster, "host_uuid": hosts[i % len(hosts)], "last_host_uuid": None,
            "image_uuid": None, "instance_offering_uuid": None, "root_volume_uuid": None,
            "hypervisor_type": "KVM", "cpu_num": 1 + (i // 3) % 8, "memory_size": (64 << 20) * (1 + i % 16),
        })
    return rows


async def measure(n_rows: int, repeats: int, work: Path) -> dict[str, Any]:
    from zstack_core import ManagementNode
    from zstack_kvm.models import VmInstanceVO

    node = ManagementNode(data_dir=work, settings={"identity.admin_password": ADMIN_PASSWORD})
    with contextlib.redirect_stdout(io.StringIO()):
        await node.start()
    try:
        hosts = [uuid.uuid4().hex for _ in range(HOSTS)]
        rows = fake_rows(n_rows, hosts, uuid.uuid4().hex, uuid.uuid4().hex)

        def insert() -> None:
            for i in range(0, len(rows), 500):
                VmInstanceVO.insert_many(rows[i:i + 500]).execute()

        t = time.perf_counter()
        await node.db.atomic(insert)
        insert_s = time.perf_counter() - t
        host = hosts[3]
        body = {"conditions": [{"name": "state", "op": "=", "value": "Running"},
                               {"name": "hostUuid", "op": "=", "value": host},
                               {"name": "cpuNum", "op": ">=", "value": 4}],
                "sortBy": "createdAt", "sortDirection": "desc", "limit": LIMIT}

        async def through_api() -> list[Any]:
            msg = node.api.build("QueryVmInstance", body)
            reply = await node.api.call(msg)
            assert reply.error is None, reply.error
            return list(reply.inventories)

        def select() -> list[Any]:
            vm = VmInstanceVO
            return list(vm.select()
                        .where((vm.state == "Running") & (vm.host_uuid == host) & (vm.cpu_num >= 4))
                        .order_by(vm.created_at.desc(nulls="last"), vm.uuid).limit(LIMIT))

        async def direct() -> list[Any]:
            return await node.db.run(select)

        api_rows, peewee_rows = await through_api(), await direct()
        same = [i.uuid for i in api_rows] == [r.uuid for r in peewee_rows]
        matches = (await node.api_call("QueryVmInstance", {**body, "count": True})).total

        api_times: list[float] = []
        peewee_times: list[float] = []
        for _ in range(repeats):  # alternating, so load changes hit both sides alike
            for fn, times in ((through_api, api_times), (direct, peewee_times)):
                t = time.perf_counter()
                await fn()
                times.append(time.perf_counter() - t)
        return {"api": median(api_times), "peewee": median(peewee_times), "insert": insert_s,
                "same": same, "matches": matches, "returned": len(api_rows)}
    finally:
        await node.stop()


def run(quick: bool) -> list[Row]:
    n_rows, repeats = (QUICK_ROWS, 10) if quick else (FULL_ROWS, 30)
    work = Path(tempfile.mkdtemp(prefix="zstack-bench-query-"))
    try:
        m = asyncio.run(measure(n_rows, repeats, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    note = f"{m['matches']:,} matches, {m['returned']} returned"
    if not m["same"]:
        note += "; the two sides returned DIFFERENT rows"
    return [
        Row(case="query", what=f"QueryVmInstance: 3 conditions, sort, limit {LIMIT}, {n_rows:,} rows "
                               f"(median of {repeats})",
            value=m["api"], baseline_name="same SELECT in peewee", baseline=m["peewee"], note=note),
        Row(case="query", what=f"bulk insert of {n_rows:,} VM rows (setup, informative)", value=m["insert"]),
    ]


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(r)
