"""Case 4: VMs created through the node on a real libvirtd beside raw libvirt-python.

N = 1 and 10 concurrent ``CreateVmInstance`` (1 CPU, 64 MiB, no image, no L3 network: a guest
that boots nothing) through a node whose host is ``qemu:///system``, beside raw libvirt-python
``defineXML`` + ``create`` of the same guests from N threads on one connection, in the same run.
"Same guests": the raw side defines the domain XML the node generated for its first VM (read
back from libvirt, renamed, without its UUID), so both start the same QEMU machine.

Timed from the first call to the last VM running; the two sides alternate, median of the
repeats. Target: node / raw at most 1.15. Every domain either side made is removed at the end
(also when a run fails). libvirtd is started with ``scripts/libvirtd.sh`` if it is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, median  # noqa: E402
from scale import ADMIN_PASSWORD  # noqa: E402

URI = "qemu:///system"
TARGET_RATIO = 1.15
MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


def libvirtd_answers() -> str | None:
    """None when ``qemu:///system`` answers (starting libvirtd if needed), else why not."""
    try:
        import libvirt
    except ImportError as exc:
        return f"libvirt-python is not installed ({exc})"

    def opens() -> bool:
        try:
            libvirt.open(URI).close()
            return True
        except libvirt.libvirtError:
            return False

    if opens():
        return None
    result = subprocess.run(["bash", str(REPO / "scripts" / "libvirtd.sh")], capture_output=True, text=True)
    if result.returncode != 0 or not opens():
        return f"no libvirtd at {URI}: {(result.stderr or result.stdout).strip()[-200:]}"
    return None


def raw_xml(template: str, name: str) -> str:
    """The node's domain XML with another name and no UUID (libvirt makes one)."""
    xml = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", template, count=1)
    return re.sub(r"\s*<uuid>[^<]*</uuid>", "", xml, count=1)


def raw_create(conn: Any, xmls: list[str]) -> float:
    """Seconds to define and start every domain of ``xmls``, one thread each."""

    def one(xml: str) -> None:
        conn.defineXML(xml).create()

    with ThreadPoolExecutor(len(xmls)) as pool:
        t = time.perf_counter()
        list(pool.map(one, xmls))
        return time.perf_counter() - t


def titled(conn: Any, run_id: str) -> list[str]:
    """Domains whose title (the VM name the node sets) is of this run: those of VMs whose
    create failed after the domain was defined, if the rollback could not remove them."""
    names = []
    for dom in conn.listAllDomains():
        with contextlib.suppress(Exception):
            if f"<title>{run_id}-" in dom.XMLDesc(0):
                names.append(dom.name())
    return names


def remove_domains(conn: Any, names: list[str]) -> None:
    import libvirt

    for name in names:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


async def measure(ns: tuple[int, ...], repeats: int, work: Path) -> tuple[dict[int, tuple[list[float], list[float]]], dict[int, str]]:
    import libvirt

    from zstack_core import ManagementNode, ZStackError

    node = ManagementNode(data_dir=work, settings={"identity.admin_password": ADMIN_PASSWORD,
                                                   "node.libvirt_uri": URI})
    with contextlib.redirect_stdout(io.StringIO()):
        await node.start()
    conn = libvirt.open(URI)
    vm_uuids: list[str] = []
    raw_names: list[str] = []
    run_id = f"bench-{uuid.uuid4().hex[:8]}"  # in every VM's name, so leftovers are found by it
    try:
        zone = (await node.api_call("CreateZone", name="bench")).inventory.uuid
        cluster = (await node.api_call("CreateCluster", name="bench", zoneUuid=zone)).inventory.uuid
        await node.api_call("AddKVMHost", name="bench", clusterUuid=cluster, url=URI)

        async def node_create(n: int) -> float:
            async def one(i: int) -> str:
                reply = await node.api_call("CreateVmInstance", name=f"{run_id}-{i}", cpuNum=1, memorySize=64 * MIB)
                return str(reply.inventory.uuid)

            t = time.perf_counter()
            results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
            elapsed = time.perf_counter() - t
            vm_uuids.extend(r for r in results if isinstance(r, str))
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            return elapsed

        async def node_cleanup() -> None:
            for vm in list(vm_uuids):
                await node.api_call("DestroyVmInstance", uuid=vm)
                await node.api_call("ExpungeVmInstance", uuid=vm)
                vm_uuids.remove(vm)

        # Warm-up of both paths (QEMU's first start on a daemon pays for capability probing);
        # the node's first VM gives the XML the raw side defines.
        await node_create(1)
        template = conn.lookupByName(f"zstack-{vm_uuids[0]}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        await node_cleanup()
        names = [f"bench-raw-{uuid.uuid4().hex[:12]}"]
        raw_names += names
        await asyncio.to_thread(raw_create, conn, [raw_xml(template, names[0])])
        await asyncio.to_thread(remove_domains, conn, names)

        out: dict[int, tuple[list[float], list[float]]] = {}
        failures: dict[int, str] = {}
        for n in ns:
            node_times: list[float] = []
            raw_times: list[float] = []
            for r in range(repeats):
                for side in (("node", "raw") if r % 2 == 0 else ("raw", "node")):
                    if side == "node":
                        try:
                            node_times.append(await node_create(n))
                        except ZStackError as exc:
                            failures.setdefault(n, str(exc.error))
                            await asyncio.sleep(15)  # let a host marked lost reconnect
                        await node_cleanup()
                    else:
                        names = [f"bench-raw-{uuid.uuid4().hex[:12]}" for _ in range(n)]
                        raw_names.extend(names)
                        raw_times.append(await asyncio.to_thread(raw_create, conn, [raw_xml(template, x) for x in names]))
                        await asyncio.to_thread(remove_domains, conn, names)
            out[n] = (node_times, raw_times)
        return out, failures
    finally:
        # Whatever a failed run left: the domain of every VM the node knows, and the raw ones.
        with contextlib.suppress(Exception):
            vm_uuids += [v.uuid for v in await node.query.find("VmInstance", limit=None)]
        await node.stop()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        # A fresh connection: the run's own may have died with a libvirtd restarted under it.
        conn = libvirt.open(URI)
        try:
            remove_domains(conn, [f"zstack-{u}" for u in set(vm_uuids)] + raw_names + titled(conn, run_id))
        finally:
            conn.close()


def run(quick: bool) -> list[Row]:
    ns, repeats = ((1,), 1) if quick else ((1, 10), 3)
    why_not = libvirtd_answers()
    if why_not is not None:
        return [Row(case="kvm", what=f"{n} VMs through the node vs raw libvirt", value=None,
                    target=f"<= {TARGET_RATIO:g}x", note=why_not) for n in ns]
    work = Path(tempfile.mkdtemp(prefix="zstack-bench-kvm-"))
    try:
        results, failures = asyncio.run(measure(ns, repeats, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for n, (node_times, raw_times) in results.items():
        raw_s = median(raw_times)
        node_s = median(node_times) if node_times else None
        note = ""
        if n in failures:
            note = (f"{repeats - len(node_times)} of {repeats} node runs failed: {failures[n]}")
        rows.append(Row(case="kvm", what=f"{n} concurrent 64 MiB VMs through the node, qemu:///system "
                                         f"(median of {len(node_times)})",
                        value=node_s, baseline_name=f"raw libvirt-python define+start, median of {len(raw_times)}",
                        baseline=raw_s, target=f"<= {TARGET_RATIO:g}x",
                        met=False if n in failures else node_s is not None and node_s / raw_s <= TARGET_RATIO,
                        note=note))
        print(f"kvm N={n}: node {', '.join(f'{t:.2f}' for t in node_times)} s; "
              f"raw {', '.join(f'{t:.2f}' for t in raw_times)} s", file=sys.stderr)
    return rows


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(r)
