"""Faults: libvirtd killed (SIGKILL) and restarted while the node is under load.

The node runs as its own process (``zstack node start``, SQLite) with one host on
``qemu:///system`` and a few real 64 MiB guests (no disk: each idles in its firmware). Worker
threads keep calling the HTTP API (queries, start/stop/reboot of their own VM, create and delete
of short-lived VMs, reconnecting the host) while libvirtd gets SIGKILL. While it is down, the
QEMU process of one VM is killed too: that VM stops behind the node's back. libvirtd is started
again a few seconds later.

What must hold:

* the host goes ``Disconnected`` and comes back ``Connected`` by itself;
* VM states resync with what libvirt reports: the VM whose QEMU was killed is ``Stopped``, the
  VM left alone is ``Running`` (its QEMU outlived libvirtd), and every VM's state agrees with
  its domain;
* no API call waits past its timeout (``bus.default_timeout``): none fails with ``SYS.1001``
  (the node giving up on it), every call's latency is recorded and stays under
  :data:`CALL_LIMIT`; calls that fail do so with a ``HOST.*``/``VM.*`` ErrorCode and a 4xx
  status, never a hang, a 5xx or a dropped connection;
* afterwards the node works as before, ``zstack check`` finds nothing, and once every VM is
  deleted the host's capacity is back where it started and no domain of the test is left.

Figures are printed (``LIBVIRTD FAULT FIGURES``) for RELIABILITY.md.

The test kills the libvirtd that serves ``/run/libvirt/libvirt-sock`` (found from the socket's
peer credentials) and starts it again with the same command line, so it also works against a
private libvirtd in a mount namespace of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest

from zstack_core.sdk import Client, ZStackApiError

from .conftest import ADMIN_PASSWORD
from .nodeproc import NodeProcess
from .virsh import virsh, zstack_domains

pytestmark = pytest.mark.libvirtd

MiB = 1 << 20
API_TIMEOUT = 30.0
"""``bus.default_timeout``: how long an API message may run before it is answered ``SYS.1001``."""
CALL_LIMIT = 2 * API_TIMEOUT
"""The longest a call may take, seen from the client: its timeout, and as much again for the
HTTP round trips (a long API is answered through its job, polled every 0.2 s) on a machine
whose CPUs are shared many times over. A call held by the dead daemon would wait until it came
back or forever; one the node gave up on would fail with ``SYS.1001``, which no call may."""
WORKERS = 6
OUTAGE = 3.0
FAST_CONFIGS = {"host.pingInterval": "0.5", "host.maxReconnectInterval": "1", "vm.syncInterval": "1",
                "vm.stopTimeout": "0.5"}
CALL_CODE = re.compile(r"^(HOST|VM)\.\d{4}$")


# -- libvirtd ------------------------------------------------------------------------------------


SOCKET = "/run/libvirt/libvirt-sock"
"""Where ``qemu:///system`` connects."""


def libvirtd_pid() -> int | None:
    """The pid of the libvirtd serving :data:`SOCKET`, from the socket's peer credentials (the
    daemon that really answers here, whatever pid file it was started with)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(SOCKET)
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid or None


def command_line(pid: int) -> list[str]:
    return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if a]


def libvirtd_answers(uri: str) -> bool:
    return subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, timeout=60).returncode == 0


def start_libvirtd(uri: str, old_pid: int | None, command: list[str]) -> None:
    """Start libvirtd again as it was started (``command``), once the killed one is gone, and
    wait until it answers."""
    deadline = time.monotonic() + 30
    while old_pid is not None and time.monotonic() < deadline:
        try:
            os.kill(old_pid, 0)
        except OSError:
            break
        time.sleep(0.05)
    if libvirtd_pid() is None:
        subprocess.run(command, check=True, timeout=60)
    while not libvirtd_answers(uri):
        assert time.monotonic() < deadline + 30, "libvirtd did not come back"
        time.sleep(0.1)


def domain_states(uri: str) -> dict[str, str]:
    """VM uuid -> ``virsh list --all`` state of every ``zstack-`` domain."""
    return {name[len("zstack-"):]: state for name, state in zstack_domains(uri).items()}


def domains_titled(uri: str, prefix: str) -> set[str]:
    """VM uuids of the ``zstack-`` domains whose title (the VM's name) starts with ``prefix``:
    this test's, whether or not the node still knows them."""
    import libvirt

    conn = libvirt.open(uri)
    out = set()
    try:
        for dom in conn.listAllDomains():
            try:
                if dom.name().startswith("zstack-") and dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE,
                                                                      None).startswith(prefix):
                    out.add(dom.name()[len("zstack-"):])
            except libvirt.libvirtError:
                continue  # gone meanwhile, or no title: not one of ours
    finally:
        conn.close()
    return out


def kill_qemu_of(uuid: str) -> int:
    """SIGKILL the QEMU process of VM ``uuid`` (found from libvirt's pid file: libvirtd is down)."""
    pid = int(Path(f"/run/libvirt/qemu/zstack-{uuid}.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    return pid


# -- the load --------------------------------------------------------------------------------------


@attrs.define
class Call:
    api: str
    started: float
    seconds: float
    code: str = ""
    """The ErrorCode of a failed call; ``transport: ...`` when no answer came; "" when it worked."""
    status: int = 0
    chain: str = ""
    """Every code of the error's cause chain, with the innermost details."""


@attrs.define
class Load:
    """Worker threads calling the API until ``stop`` is set; every call is recorded."""

    url: str
    session: str
    vms: list[str]
    prefix: str
    calls: list[Call] = attrs.field(factory=list)
    stop: threading.Event = attrs.field(factory=threading.Event)
    temporaries: set[str] = attrs.field(factory=set)
    """Every short-lived VM created."""
    undeleted: list[str] = attrs.field(factory=list)
    """Short-lived VMs the workers could not delete before they stopped."""
    threads: list[threading.Thread] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def call(self, client: Client, api: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        record = Call(api=api, started=started, seconds=0.0)
        result = None
        try:
            result = fn()
        except ZStackApiError as exc:
            record.code, record.status = exc.code, exc.status
            chain = list(exc.error.chain())
            record.chain = " <- ".join(e.code for e in chain) + f": {chain[-1].details}"
        except Exception as exc:  # a dropped connection, a client timeout: no answer at all
            record.code = f"transport: {type(exc).__name__}: {exc}"
        record.seconds = time.monotonic() - started
        with self.lock:
            self.calls.append(record)
        return result

    def worker(self, index: int) -> None:
        rng = random.Random(index)
        client = Client(self.url, self.session, timeout=API_TIMEOUT * 3)
        vm = self.vms[index]
        leftovers: list[str] = []  # short-lived VMs whose deletion failed (the outage): retried
        while not self.stop.is_set():
            if leftovers:
                self.delete(client, leftovers)
            roll = rng.random()
            if roll < 0.35:
                self.call(client, "QueryVmInstance", lambda: client.query("VmInstance"))
                self.call(client, "QueryHost", lambda: client.query("Host"))
            elif roll < 0.70:
                got = self.call(client, "QueryVmInstance", lambda: client.query("VmInstance", [f"uuid={vm}"]))
                state = got[0]["state"] if got else "?"
                api = {"Running": "StopVmInstance", "Stopped": "StartVmInstance"}.get(state)
                if api is None:
                    time.sleep(0.05)
                else:
                    self.call(client, api, lambda: client.call(api, uuid=vm, wait=API_TIMEOUT * 3))
            elif roll < 0.80:
                self.call(client, "RebootVmInstance",
                          lambda: client.call("RebootVmInstance", uuid=vm, wait=API_TIMEOUT * 3))
            elif roll < 0.95:
                made = self.call(client, "CreateVmInstance", lambda: client.call(
                    "CreateVmInstance", name=f"{self.prefix}tmp-{index}", cpuNum=1, memorySize=64 * MiB,
                    wait=API_TIMEOUT * 3))
                if made:
                    uuid = made["inventory"]["uuid"]
                    with self.lock:
                        self.temporaries.add(uuid)
                    leftovers.append(uuid)
                    self.delete(client, leftovers)
            else:
                self.call(client, "ReconnectHost", lambda: client.call(
                    "ReconnectHost", uuid=client.query("Host")[0]["uuid"], wait=API_TIMEOUT * 3))
        with self.lock:
            self.undeleted.extend(leftovers)
        client.http.close()

    def delete(self, client: Client, uuids: list[str]) -> None:
        """Destroy and expunge ``uuids``; those that could not be (yet) stay in the list."""
        for uuid in list(uuids):
            found = self.call(client, "QueryVmInstance", lambda: client.query("VmInstance", [f"uuid={uuid}"]))
            if found is None:
                continue  # the query failed: try again later
            steps = [] if not found else ["ExpungeVmInstance"] if found[0]["state"] == "Destroyed" else [
                "DestroyVmInstance", "ExpungeVmInstance"]
            for api in steps:
                if self.call(client, api, lambda: client.call(api, uuid=uuid, wait=API_TIMEOUT * 3)) is None:
                    break
            else:
                uuids.remove(uuid)

    def start(self) -> None:
        for i in range(len(self.vms)):
            t = threading.Thread(target=self.worker, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self, timeout: float) -> list[str]:
        """Stop the workers; the names of those still stuck in a call after ``timeout``."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


@attrs.define
class Watcher:
    """Polls the host's status every 0.1 s and records when it changes."""

    url: str
    session: str
    changes: list[tuple[float, str]] = attrs.field(factory=list)
    stop: threading.Event = attrs.field(factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        client = Client(self.url, self.session, timeout=API_TIMEOUT * 3)
        last = None
        while not self.stop.is_set():
            try:
                status = client.query("Host")[0]["status"]
            except Exception:
                status = None
            if status is not None and status != last:
                self.changes.append((time.monotonic(), status))
                last = status
            time.sleep(0.1)
        client.http.close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="watcher", daemon=True)
        self.thread.start()

    def first(self, status: str, after: float) -> float | None:
        return next((t for t, s in self.changes if s == status and t >= after), None)


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def each(fn: Callable[[str], Any], items: list[str]) -> list[Any]:
    """``fn`` over ``items`` at once (a thread each), results in order."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def foreign_orphan(uri: str, finding: dict[str, Any], prefix: str) -> bool:
    """An ``orphan-domain`` finding about a domain some other test made on the shared libvirtd
    (its title, the VM's name, is not one of this test's): not this node's to answer for."""
    if finding["kind"] != "orphan-domain":
        return False
    xml = virsh(uri, "dumpxml", f"zstack-{finding['resourceUuid']}", check=False)
    title = re.search(r"<title>(.*?)</title>", xml)
    return bool(xml) and not (title and title.group(1).startswith(prefix))


def zstack_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zstack_core.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


# -- the test --------------------------------------------------------------------------------------


def test_libvirtd_killed_and_restarted_under_load(libvirtd: str, tmp_path: Path) -> None:
    daemon = libvirtd_pid()
    command = command_line(daemon) if daemon else []
    if not ({"-d", "--daemon"} & set(command)):
        pytest.skip(f"libvirtd here is not one this test can restart (libvirtd -d): {command or 'not found'}")
    env = {"ZSTACK_IDENTITY_ADMIN_PASSWORD": ADMIN_PASSWORD, "ZSTACK_NODE_LIBVIRT_URI": libvirtd}
    node = NodeProcess(tmp_path / "node", env=env).start()
    client = Client(node.url, timeout=API_TIMEOUT * 3)
    client.login("admin", ADMIN_PASSWORD)
    session = client.session_uuid or ""
    made: set[str] = set()
    load: Load | None = None
    watcher = Watcher(node.url, session)
    figures: dict[str, Any] = {}
    began = time.monotonic()
    prefix = f"lvd{uuidlib.uuid4().hex[:8]}-"  # names (domain titles) of this test's VMs
    try:
        for name, value in FAST_CONFIGS.items():
            client.call("UpdateGlobalConfig", category="kvm", name=name, value=value)
        zone = client.call("CreateZone", name="zone")["inventory"]["uuid"]
        cluster = client.call("CreateCluster", name="cluster", zoneUuid=zone)["inventory"]["uuid"]
        host = client.call("AddKVMHost", name="host", clusterUuid=cluster, url=libvirtd)["inventory"]
        assert host["status"] == "Connected"

        def create(name: str) -> str:
            with Client(node.url, session, timeout=API_TIMEOUT * 3) as own:
                vm = own.call("CreateVmInstance", name=prefix + name, cpuNum=1, memorySize=64 * MiB)["inventory"]
            made.add(vm["uuid"])
            return str(vm["uuid"])

        victim, bystander, *workers = each(create, ["victim", "bystander", *(f"worker-{i}" for i in range(WORKERS))])
        domain = virsh(libvirtd, "dumpxml", f"zstack-{victim}")
        if os.path.exists("/dev/kvm"):
            assert "<domain type='kvm'" in domain  # hardware virtualisation, not TCG

        figures["setup_s"] = round(time.monotonic() - began, 1)
        watcher.start()
        load = Load(node.url, session, workers, prefix)
        load.start()
        time.sleep(4)  # the load before the fault

        # -- the fault: SIGKILL, a guest dies meanwhile, libvirtd starts again -------------------
        pid = libvirtd_pid()
        assert pid is not None and command_line(pid) == command
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        try:
            wait(lambda: watcher.first("Disconnected", killed), 30, "the host seen Disconnected", 0.05)
            kill_qemu_of(victim)
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - killed)))
        finally:
            restarting = time.monotonic()
            start_libvirtd(libvirtd, pid, command)
        restarted = time.monotonic()
        wait(lambda: watcher.first("Connected", restarted), 60, "the host Connected again", 0.05)
        time.sleep(4)  # the load after the fault
        stuck = load.finish(CALL_LIMIT)
        watcher.stop.set()
        made |= load.temporaries
        assert not stuck, f"calls still waiting long after their timeout: {stuck}"

        disconnected = watcher.first("Disconnected", killed)
        connected = watcher.first("Connected", restarted)
        assert disconnected is not None and connected is not None
        figures.update(outage_s=round(restarted - killed, 2), libvirtd_start_s=round(restarted - restarting, 2),
                       seen_disconnected_after_s=round(disconnected - killed, 2),
                       reconnected_after_restart_s=round(connected - restarted, 2))

        # Short-lived VMs whose deletion failed during the outage: deleted now (their VM states
        # have resynced: a VM is Unknown while its host is away).
        def deleted() -> bool:
            load.delete(client, load.undeleted)  # type: ignore[union-attr]
            return not load.undeleted  # type: ignore[union-attr]

        wait(deleted, 60, "the short-lived VMs deleted", 0.5)

        # -- VM states resync with libvirt ----------------------------------------------------------
        disagreements: list[str] = []

        def settled() -> list[dict[str, Any]] | None:
            vms = client.query("VmInstance")
            domains = domain_states(libvirtd)
            disagreements[:] = [f"{vm['name']} {vm['uuid']}: {vm['state']}, domain {domains.get(vm['uuid'])}"
                                for vm in vms if vm["state"] not in ("Running", "Stopped")
                                or (vm["state"] == "Running") != (domains.get(vm["uuid"]) == "running")]
            # A domain of a create rolled back during the outage, not yet removed:
            disagreements.extend(f"domain {u} of no VM" for u in
                                 domains_titled(libvirtd, prefix) - {vm["uuid"] for vm in vms})
            return None if disagreements else vms

        settle_from = time.monotonic()
        figures["after_load_s"] = round(settle_from - began, 1)
        try:
            vms = {vm["uuid"]: vm for vm in wait(settled, 60, "every VM's state to agree with libvirt", 0.5)}
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {disagreements}") from None
        figures["settled_after_load_s"] = round(time.monotonic() - settle_from, 2)
        assert vms[victim]["state"] == "Stopped"  # its QEMU was killed while libvirtd was down
        assert vms[bystander]["state"] == "Running" and domain_states(libvirtd)[bystander] == "running"
        assert set(vms) == {victim, bystander, *workers}  # no short-lived VM left behind

        # -- the calls: none waited past its timeout; failures are clear -----------------------------
        calls = load.calls
        seconds = [c.seconds for c in calls]
        failed = [c for c in calls if c.code]
        figures.update(calls=len(calls), failed=len(failed),
                       failed_codes=dict(Counter(f"{c.api} {c.status} {c.chain}" for c in failed)),
                       max_s=round(max(seconds), 3), p99_s=round(percentile(seconds, 0.99), 3),
                       p50_s=round(percentile(seconds, 0.5), 3),
                       slowest=[(c.api, round(c.seconds, 2), c.code) for c in
                                sorted(calls, key=lambda c: -c.seconds)[:5]],
                       during_outage=sum(1 for c in calls if killed <= c.started <= connected))
        print("\nLIBVIRTD FAULT FIGURES", json.dumps(figures))
        assert max(seconds) < CALL_LIMIT, figures["slowest"]
        bad = [c for c in failed if not CALL_CODE.match(c.code) or not 400 <= c.status < 500]
        assert not bad, bad
        after = [c for c in calls if c.started > connected + 1.0 and c.api != "ReconnectHost"]
        assert after, "no call made after the host came back"

        # -- the node works as before; the check is clean; nothing leaked ---------------------------
        def start(uuid: str) -> str:
            with Client(node.url, session, timeout=API_TIMEOUT * 3) as own:
                return str(own.call("StartVmInstance", uuid=uuid)["inventory"]["state"])

        assert set(each(start, [u for u in (victim, *workers) if vms[u]["state"] == "Stopped"])) <= {"Running"}
        figures["after_restarts_s"] = round(time.monotonic() - began, 1)
        cli_env = {**{k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")},
                   "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        login = zstack_cli("login", "--url", node.url, "--account", "admin", "--password", ADMIN_PASSWORD,
                           env=cli_env)
        assert login.returncode == 0, login.stderr
        check = zstack_cli("check", "--json", env=cli_env)
        report = json.loads(check.stdout)
        findings = [f for f in report["findings"] if not foreign_orphan(libvirtd, f, prefix)]
        assert not findings and not report["failures"], report
        assert check.returncode in (0, 1) and report["hostsChecked"] == [host["uuid"]], report
        figures["check_s"] = report["seconds"]
        figures["after_check_s"] = round(time.monotonic() - began, 1)
        def delete(uuid: str) -> None:
            with Client(node.url, session, timeout=API_TIMEOUT * 3) as own:
                own.call("DestroyVmInstance", uuid=uuid)
                own.call("ExpungeVmInstance", uuid=uuid)

        each(delete, list(vms))
        after_host = client.query("Host")[0]
        assert (after_host["availableCpu"], after_host["availableMemory"]) == (host["availableCpu"],
                                                                               host["availableMemory"])
        assert not set(domain_states(libvirtd)) & made and not domains_titled(libvirtd, prefix)
        print(f"LIBVIRTD FAULT TEST {time.monotonic() - began:.1f}s", json.dumps(figures))
    finally:
        watcher.stop.set()
        if load is not None:
            load.finish(5)
            made |= load.temporaries
        if libvirtd_pid() is None or not libvirtd_answers(libvirtd):
            start_libvirtd(libvirtd, None, command)
        node.stop()
        client.http.close()
        for uuid in made | domains_titled(libvirtd, prefix):  # what a failed run left on the shared libvirtd
            virsh(libvirtd, "destroy", f"zstack-{uuid}", check=False)
            virsh(libvirtd, "undefine", f"zstack-{uuid}", check=False)


# -- defects this test found, each shown on its own (fast: no libvirtd) --------------------------


def test_a_failed_create_for_want_of_a_connected_host_is_a_4xx_not_a_500() -> None:
    """A flow chain wraps each failure in ``SYS.1006`` (operation failed, the cause says why).
    That wrapper used to decide the HTTP status: every failed create answered 500. The cause
    decides now; ``SYS.1006`` alone (the database is down) is still a 500."""
    from zstack_core.errors import SysErrors, operr
    from zstack_core.http.status import status_of
    from zstack_kvm.errors import HostErrors, VmErrors

    spaces = {"HOST": HostErrors, "VM": VmErrors, "SYS": SysErrors}
    no_host = HostErrors.error("1004", "no Connected and Enabled KVM host")
    failed_create = VmErrors.error("1007", "creating VM v failed",
                                   cause=operr("flow chain vm-create failed at allocate-host", cause=no_host))
    assert status_of(failed_create, spaces) == 400
    assert status_of(operr("database unavailable"), spaces) == 500
    assert status_of(VmErrors.error("1007", "x", cause=operr("y", cause=SysErrors.error("1000", "a bug"))),
                     spaces) == 500


def test_listing_domains_skips_a_domain_destroyed_meanwhile(tmp_path: Path) -> None:
    """The VM sync and ``zstack check`` list a host's domains, then read each one's state. A
    domain destroyed in between (another client of the same libvirtd) made the whole listing
    fail with "Domain not found", and the check could not run. It is left out now."""
    import libvirt

    from zstack_kvm.hypervisor import list_domain_states

    from .conftest import driver_xml

    conn = libvirt.open(driver_xml(tmp_path / "driver.xml"))
    uuids = [uuidlib.uuid4().hex for _ in range(2)]
    try:
        for u in uuids:
            conn.defineXML(f"<domain type='test'><name>zstack-{u}</name><uuid>{u}</uuid>"
                           "<memory>65536</memory><os><type>hvm</type></os></domain>")

        class GoneMeanwhile:
            """The real connection; the first domain is undefined right after the listing."""

            def listAllDomains(self, flags: int = 0) -> list[Any]:  # noqa: N802 - libvirt's name
                domains = conn.listAllDomains(flags)
                conn.lookupByName(f"zstack-{uuids[0]}").undefine()
                return domains

        assert list_domain_states(GoneMeanwhile()) == {uuids[1]: "Stopped"}  # type: ignore[arg-type]
    finally:
        conn.close()


async def test_a_create_rolled_back_while_its_host_is_away_leaves_no_domain(tmp_path: Path) -> None:
    """A create fails after its domain was made, and the host's connection is gone at that
    moment (libvirtd died): the rollback cannot remove the domain. The VM is rolled back
    anyway, and a ``LeftDomainVO`` row names the domain; once the host is back the VM sync
    removes the domain and the row. Before, the domain was left on the host for good (the checker's
    ``orphan-domain``), which the libvirtd test above found.

    On ``test:///default``: the test driver keeps that host's domains while any connection
    to it is open in the process (this test holds one), so the node's reconnect finds them."""
    import libvirt

    from zstack_core import FlowContribution, ManagementNode, NoRollbackFlow, hookimpl
    from zstack_core.check import check
    from zstack_core.header.flows import VmCreateFlows
    from zstack_kvm.errors import HostErrors
    from zstack_core.testing import EnvSpec, build_env
    from zstack_kvm.models import LeftDomainVO, VmCreatingVO
    from zstack_kvm.service import compute_of

    class HostGoesAway(NoRollbackFlow):
        """Right after the domain is made: the host's libvirt connection is lost, and the create
        fails (as one does when libvirtd dies under it)."""

        name = "test-host-goes-away"

        async def run(self, data: dict[str, Any]) -> None:
            await compute_of(data["node"]).hosts.connections[data["spec"].destination_host.uuid].close()
            raise HostErrors.exc("1001", "libvirt closed the connection")

    class LosesTheHost:
        @hookimpl
        def zstack_flows(self) -> list[FlowContribution]:
            return [FlowContribution(chain=VmCreateFlows.CHAIN, flow=HostGoesAway(),
                                     order=VmCreateFlows.CREATE_ON_HYPERVISOR + 1)]

    mine = libvirt.open("test:///default")
    plugin = LosesTheHost()
    node = ManagementNode(data_dir=tmp_path / "node", config={}, plugins=[plugin],
                          settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": "test:///default"})
    await node.start()
    try:
        for name, value in FAST_CONFIGS.items():
            await node.configs.update("kvm", name, float(value))
        env = await build_env(node, EnvSpec().zone().cluster().host(url="test:///default"))
        before = {d.name() for d in mine.listAllDomains()}
        with pytest.raises(Exception) as info:
            await node.api_call("CreateVmInstance", {"name": "v", "cpuNum": 1, "memorySize": 64 * MiB})
        assert getattr(info.value, "code", "") == "VM.1007"
        assert await node.query.find("VmInstance") == []
        left = [d.name() for d in mine.listAllDomains() if d.name() not in before]
        assert len(left) == 1 and left[0].startswith("zstack-")  # the rollback could not remove it
        assert await node.db.run(lambda: VmCreatingVO.select().count()) == 0  # the create has ended
        rows = await node.db.run(lambda: [(r.vm_uuid, r.host_uuid) for r in LeftDomainVO.select()])
        assert rows == [(left[0][len("zstack-"):], env.host.uuid)]

        deadline = time.monotonic() + 30
        while left[0] in {d.name() for d in mine.listAllDomains()} or \
                await node.db.run(lambda: LeftDomainVO.select().count()):
            assert time.monotonic() < deadline, "the domain of the rolled-back create is still there"
            await asyncio.sleep(0.1)
        host = (await node.query.find("Host"))[0]
        assert host.status == "Connected" and host.uuid == env.host.uuid
        assert (await check(node)).ok
    finally:
        await node.stop()
        for d in mine.listAllDomains():
            if d.name() not in before and d.name().startswith("zstack-"):
                if d.isActive():
                    d.destroy()
                d.undefine()
        mine.close()
