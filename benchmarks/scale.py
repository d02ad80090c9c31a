"""Case 3: N concurrent ``CreateVmInstance`` on one node, SQLite, libvirt's test driver.

Each VM has an image (root volume on local primary storage) and a NIC on an L3 network, as in
ZStack's own figures (one management node, 100 threads): 1 -> 0.51 s, 10 -> 1.55 s,
100 -> 11.33 s, 1000 -> 103 s, 10000 -> 23 min.

Two ways in, each N in a fresh node process (so its peak RSS is that N's):

* in-process: a worker process (``python benchmarks/scale.py inproc N DIR 0``) starts the node
  with every installed plugin, builds the environment, submits N ``CreateVmInstance`` messages
  at once (``node.api.submit``: each answers with its job, as the HTTP API does) and waits for
  every job; latency of a VM is submit -> job finished; peak RSS is the worker's
  ``getrusage`` maximum.
* in-process/100: the same node, driven by 100 callers (ZStack's 100 threads) each awaiting
  ``node.api.call`` for one VM after another: at most 100 creates in flight.
* HTTP: ``zstack node start`` runs as its own process; this process drives it over loopback with
  the SDK from a pool of 100 threads (ZStack's 100 threads), each ``call`` posting the API and
  polling its job; peak RSS is the node process's ``VmHWM``.

The environment: one zone and cluster, one test-driver host read from a driver XML file (100,000
CPUs, 10 TiB memory: 10,000 VMs of 1 CPU / 64 MiB fit; ``test:///default`` has 16 CPUs and 8 GiB),
local primary storage, a 1 MiB raw image, a no-VLAN L2 and an L3 with a /16 range.

``bus.default_timeout`` is raised to one hour on these nodes: with 10,000 creates in flight
each one takes about as long as the whole run, and the default 30 s would time out the later
ones. That is a setting of the benchmark, said here so it is not mistaken for a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import Row, format_value, percentile, table  # noqa: E402

ZSTACK_PUBLISHED = {1: 0.51, 10: 1.55, 100: 11.33, 1000: 103.0, 10000: 23 * 60.0}
"""ZStack README: seconds to create N VMs on one management node with 100 threads."""

INPROC_CALLERS = {"in-process": 0, "in-process/100": 100}
"""In-process modes -> callers: 0 submits all N at once (each answers with its job) and awaits
every job; 100 is ZStack's 100 threads: 100 callers each awaiting one ``node.api.call`` after
another."""
MODES = ("in-process", "in-process/100", "http")
HTTP_HOLDS = {"http": 10.0, "http/polled": 0.0}
"""HTTP modes -> how long the node holds each job poll (the SDK's ``job_hold``). ``http/polled``
is the baseline for held polls: each client asks every 0.1 s, as the SDK did before them (not
in the default modes; ``--scale-mode http/polled``)."""
FULL_NS = (1, 10, 100, 1000, 10000)
QUICK_NS = (1, 10, 100)
HTTP_THREADS = 100
ADMIN_PASSWORD = "bench-admin-password"
BUS_TIMEOUT = 3600.0
TARGET_N = 10000
TARGET_INPROC_S = 30.0
TARGET_HTTP_S = 60.0
TARGET_RSS_MIB = 1.5 * 1024
MIB = 1 << 20

HOST_XML = """<node>
  <cpu><mhz>2000</mhz><model>i686</model><active>100000</active><nodes>1</nodes>
    <sockets>1</sockets><cores>100000</cores><threads>1</threads></cpu>
  <memory>{kib}</memory>
</node>
"""


def prepare(work: Path) -> tuple[str, str]:
    """Write the big test-driver host and a blank 1 MiB image under ``work``; return their
    libvirt URI and path."""
    work.mkdir(parents=True, exist_ok=True)
    xml = work / "big-host.xml"
    xml.write_text(HOST_XML.format(kib=10 << 30))  # 10 TiB in KiB
    image = work / "blank.raw"
    with image.open("wb") as f:
        f.truncate(1 << 20)
    return f"test://{xml}", str(image)


def vm_body(i: int, image_uuid: str, l3_uuid: str) -> dict[str, Any]:
    return {"name": f"bench-vm-{i}", "cpuNum": 1, "memorySize": 64 * MIB,
            "imageUuid": image_uuid, "l3NetworkUuids": [l3_uuid]}


def clean_env() -> dict[str, str]:
    """The environment of the processes the benchmarks start: this one without ``ZSTACK_*``
    variables of the developer's shell, and without ``PYTHONDONTWRITEBYTECODE``: an installed
    node runs from bytecode caches (pip writes them for wheels), while with that variable set
    every start compiles every module again (about 0.5 s more here)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("ZSTACK_") and k != "PYTHONDONTWRITEBYTECODE"}


# -- in-process worker ------------------------------------------------------------------------


async def _inproc(n: int, work: Path, callers: int) -> dict[str, Any]:
    """``callers`` 0: all ``n`` submitted at once, then every job awaited; else that many
    callers each awaiting ``node.api.call`` of one VM after another."""
    from zstack_core import ManagementNode
    from zstack_core.testing import EnvSpec, build_env

    host_url, image_path = prepare(work)
    node = ManagementNode(data_dir=work / "data", settings={
        "identity.admin_password": ADMIN_PASSWORD, "bus.default_timeout": BUS_TIMEOUT})
    with contextlib.redirect_stdout(io.StringIO()):
        await node.start()
    try:
        env = await build_env(node, EnvSpec().zone().cluster().host(url=host_url).primary_storage()
                              .l2_network().l3_network(cidr="10.10.0.0/16").image(url=image_path))
        image_uuid, l3_uuid = env.image.uuid, env.l3.uuid
        starts: list[float] = [0.0] * n
        errors: list[str] = []
        latencies: list[float] = []
        jobs: list[Any] = []

        async def submit(i: int) -> Any:
            starts[i] = time.time()
            msg = node.api.build("CreateVmInstance", vm_body(i, image_uuid, l3_uuid))
            job = await node.api.submit(msg)
            if getattr(job, "error", None) is not None:  # refused before a job existed
                errors.append(str(job.error))
                return None
            return job

        async def caller(indexes: range) -> None:
            for i in indexes:
                t = time.perf_counter()
                reply = await node.api.call(node.api.build("CreateVmInstance", vm_body(i, image_uuid, l3_uuid)))
                if reply.error is not None:
                    errors.append(str(reply.error))
                else:
                    latencies.append(time.perf_counter() - t)

        def done() -> int:
            if callers:
                return len(latencies) + len(errors)
            return sum(1 for j in jobs if j is not None and j.state != "Running")

        async def progress() -> None:
            while True:
                await asyncio.sleep(5)
                print(f"scale inproc N={n}: {time.perf_counter() - t0:.0f}s, {done()} done", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        reporter = asyncio.create_task(progress())
        if callers:
            await asyncio.gather(*(caller(range(c, n, callers)) for c in range(min(callers, n))))
        else:
            jobs += await asyncio.gather(*(submit(i) for i in range(n)))
            await node.api.drain()
        wall = time.perf_counter() - t0
        reporter.cancel()
        if not callers:
            latencies = [j.finished_at - starts[i] for i, j in enumerate(jobs)
                         if j is not None and j.state == "Succeeded"]
            errors += [str(j.error) for j in jobs if j is not None and j.state != "Succeeded"]
        running = (await node.api_call("QueryVmInstance", conditions=[
            {"name": "state", "op": "=", "value": "Running"}], count=True)).total
        return {"n": n, "wall": wall, "latencies": sorted(latencies), "errors": len(errors),
                "first_error": errors[0] if errors else "", "running": running,
                "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.stop(), 120)


def inproc_worker(n: int, work: Path, callers: int) -> None:
    result = asyncio.run(_inproc(n, work, callers))
    print("RESULT " + json.dumps(result), flush=True)


# -- over HTTP -------------------------------------------------------------------------------


def zstack_command() -> list[str]:
    """How a user starts the node: the ``zstack`` script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).with_name("zstack")
    return [str(script)] if script.exists() else [sys.executable, "-m", "zstack_core.cli"]


class NodeProcess:
    """``zstack node start`` in a process of its own, on a loopback port it picks."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        env = clean_env() | {"ZSTACK_ADMIN_PASSWORD": ADMIN_PASSWORD, "PYTHONUNBUFFERED": "1"} | (extra_env or {})
        self.log = (data_dir.parent / "node.log").open("w")
        self.proc = subprocess.Popen([*zstack_command(), "--data-dir", str(data_dir), "node", "start",
                                      "--host", "127.0.0.1", "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.url = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "management node ready" in line:
                self.url = line.rsplit("HTTP API at", 1)[-1].strip()
                break
        if not self.url:
            self.proc.wait(30)
            raise RuntimeError(f"zstack node start ended without becoming ready (exit {self.proc.returncode}); "
                               f"see {self.log.name}")
        # Keep reading its output so the node never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def http_run(n: int, work: Path, deadline: float, hold: float = HTTP_HOLDS["http"]) -> dict[str, Any]:
    from zstack_core.sdk import Client

    host_url, image_path = prepare(work)
    node = NodeProcess(work / "data", {"ZSTACK_BUS_DEFAULT_TIMEOUT": str(BUS_TIMEOUT)})
    try:
        admin = Client(node.url, timeout=600)
        admin.login("admin", ADMIN_PASSWORD)
        zone = admin.call("CreateZone", name="zone")["inventory"]["uuid"]
        cluster = admin.call("CreateCluster", name="cluster", zone_uuid=zone)["inventory"]["uuid"]
        admin.call("AddKVMHost", name="host", cluster_uuid=cluster, url=host_url)
        ps = admin.call("AddLocalPrimaryStorage", name="ps", zone_uuid=zone,
                        url=str(work / "data" / "primary-storage"))["inventory"]["uuid"]
        admin.call("AttachPrimaryStorageToCluster", primary_storage_uuid=ps, cluster_uuid=cluster)
        l2 = admin.call("CreateL2NoVlanNetwork", name="l2", zone_uuid=zone, physical_interface="eth0")["inventory"]["uuid"]
        admin.call("AttachL2NetworkToCluster", l2_network_uuid=l2, cluster_uuid=cluster)
        l3 = admin.call("CreateL3Network", name="l3", l2_network_uuid=l2)["inventory"]["uuid"]
        admin.call("AddIpRangeByNetworkCidr", l3_network_uuid=l3, network_cidr="10.10.0.0/16")
        image = admin.call("AddImage", name="image", url=image_path, format="raw")["inventory"]["uuid"]

        local = threading.local()
        clients: list[Client] = []
        lock = threading.Lock()

        def client() -> Client:
            c = getattr(local, "client", None)
            if c is None:
                c = local.client = Client(node.url, admin.session_uuid, timeout=600, poll_interval=0.1,
                                          job_hold=hold)
                c._apis = admin.apis()  # one /v1/apis fetch, shared
                with lock:
                    clients.append(c)
            return c

        errors: list[str] = []
        latencies: list[float] = []

        def create(i: int) -> None:
            if time.monotonic() > deadline:
                errors.append("not sent: over the time budget")
                return
            t = time.perf_counter()
            try:
                client().call("CreateVmInstance", wait=None, **vm_body(i, image, l3))
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            latencies.append(time.perf_counter() - t)

        done = [0]

        def counted(i: int) -> None:
            create(i)
            with lock:
                done[0] += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(HTTP_THREADS, thread_name_prefix="bench-http") as pool:
            futures = [pool.submit(counted, i) for i in range(n)]
            while wait(futures, timeout=5).not_done:
                print(f"scale http N={n}: {time.perf_counter() - t0:.0f}s, {done[0]} done",
                      file=sys.stderr, flush=True)
            for f in futures:
                f.result()
        wall = time.perf_counter() - t0
        running = admin.query("VmInstance", ["state=Running"], count=True)
        rss = node.peak_rss_mib()
        for c in clients:
            c.http.close()
        return {"n": n, "wall": wall, "latencies": sorted(latencies), "errors": len(errors),
                "first_error": errors[0] if errors else "", "running": running, "rss_mib": rss}
    finally:
        node.stop()


# -- the case ----------------------------------------------------------------------------------


def run_inproc(n: int, work: Path, budget: float, callers: int = 0) -> dict[str, Any]:
    """Run the in-process worker for ``n`` in a process of its own, at most ``budget`` seconds."""
    proc = subprocess.Popen([sys.executable, __file__, "inproc", str(n), str(work), str(callers)],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    last_progress = ""
    stderr_lines: list[str] = []

    def read_err() -> None:
        nonlocal last_progress
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line)
            if line.startswith("scale "):
                last_progress = line.strip()
                print("  " + last_progress, file=sys.stderr, flush=True)

    stdout_lines: list[str] = []

    def read_out() -> None:
        assert proc.stdout is not None
        stdout_lines.extend(proc.stdout)

    # Each pipe has one reader (communicate() would read stderr too, racing read_err).
    readers = [threading.Thread(target=read_err, daemon=True), threading.Thread(target=read_out, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"n": n, "killed": f"not finished in {budget:.0f} s; last progress: {last_progress or 'none'}"}
    for reader in readers:
        reader.join(10)
    for line in stdout_lines:
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    tail = "".join(stderr_lines[-5:]).strip()
    return {"n": n, "killed": f"worker failed (exit {proc.returncode}): {tail[-300:]}"}


def rows_of(mode: str, results: Sequence[dict[str, Any]]) -> tuple[list[Row], list[list[str]]]:
    rows: list[Row] = []
    detail: list[list[str]] = []
    for r in results:
        n = r["n"]
        published = ZSTACK_PUBLISHED.get(n)
        if "killed" in r:
            rows.append(Row(case="scale", what=f"{mode}: {n:,} VM{'s' if n != 1 else ''}", value=None, baseline_name="ZStack published",
                            baseline=published, target=_target(mode, n), met=False if _target(mode, n) else None,
                            note=r["killed"]))
            detail.append([mode, f"{n:,}", "-", "-", "-", "-", "-", "-", format_value(published, "s"), "-", r["killed"]])
            continue
        lat = r["latencies"]
        wall, errors, rss = r["wall"], r["errors"], r["rss_mib"]
        target = _target(mode, n)
        limit = TARGET_INPROC_S if mode in INPROC_CALLERS else TARGET_HTTP_S
        met = (wall < limit and errors == 0 and rss < TARGET_RSS_MIB) if target else None
        note = f"{errors} errors: {r['first_error'][:120]}" if errors else ""
        if r.get("running") is not None and r["running"] != n - errors:
            note = (note + "; " if note else "") + f"{r['running']} VMs Running afterwards"
        rows.append(Row(case="scale", what=f"{mode}: {n:,} VM{'s' if n != 1 else ''}, wall time", value=wall,
                        baseline_name="ZStack published" if not errors else
                        f"ZStack published: {format_value(published, 's')}; no ratio, not all VMs were created",
                        baseline=published if not errors else None, target=target, met=met, note=note))
        detail.append([mode, f"{n:,}", format_value(wall, "s"), format_value((n - errors) / wall, "/s"),
                       format_value(percentile(lat, 0.5), "s"), format_value(percentile(lat, 0.99), "s"),
                       format_value(rss, "MiB"), str(errors), format_value(published, "s"),
                       f"{wall / published:.2f}x" if published and not errors else "", note])
        if n == TARGET_N or n == max(r2["n"] for r2 in results):
            rows.append(Row(case="scale", what=f"{mode}: {n:,} VMs, peak RSS of the node", value=rss, unit="MiB",
                            target="< 1.5 GiB" if n == TARGET_N else "",
                            met=rss < TARGET_RSS_MIB if n == TARGET_N else None))
    return rows, detail


def _target(mode: str, n: int) -> str:
    if n != TARGET_N:
        return ""
    return (f"< {TARGET_INPROC_S:g} s" if mode in INPROC_CALLERS else f"< {TARGET_HTTP_S:g} s") + ", 0 errors, RSS < 1.5 GiB"


def run(quick: bool, budget: float = 1800.0, modes: Sequence[str] = MODES,
        ns: Sequence[int] | None = None) -> list[Row]:
    """Every N in a fresh node process, in-process then over HTTP; print the detail table."""
    ns = tuple(ns or (QUICK_NS if quick else FULL_NS))
    rows: list[Row] = []
    detail: list[list[str]] = []
    base = Path(tempfile.mkdtemp(prefix="zstack-bench-scale-"))
    try:
        for mode in modes:
            results = []
            for n in ns:
                work = base / f"{mode}-{n}"
                print(f"scale: {mode}, N={n:,} ...", file=sys.stderr, flush=True)
                if mode in INPROC_CALLERS:
                    result = run_inproc(n, work, budget, INPROC_CALLERS[mode])
                else:
                    deadline = time.monotonic() + budget
                    try:
                        result = http_run(n, work, deadline, HTTP_HOLDS[mode])
                    except Exception as exc:  # noqa: BLE001 - reported as the row's note
                        result = {"n": n, "killed": f"{type(exc).__name__}: {exc}"}
                results.append(result)
                shutil.rmtree(work, ignore_errors=True)
                if "killed" in result:
                    for later in ns[ns.index(n) + 1:]:
                        results.append({"n": later, "killed": f"not run: N={n:,} did not finish"})
                    break
            mode_rows, mode_detail = rows_of(mode, results)
            rows += mode_rows
            detail += mode_detail
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"Scale on the libvirt test driver (SQLite, one node; HTTP: {HTTP_THREADS} client threads on loopback)")
    print(table(["mode", "N", "wall", "VMs/s", "p50", "p99", "peak RSS", "errors", "ZStack", "ratio", "note"],
                detail, right=(1, 2, 3, 4, 5, 6, 7, 8, 9)))
    print()
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "inproc":
        inproc_worker(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: scale.py inproc N WORKDIR CALLERS  (the suite runs it: python benchmarks/run.py --case scale)")
