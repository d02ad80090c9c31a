"""Acceptance: three ``zstack node start`` processes on one throwaway database (PostgreSQL, and
MariaDB), with every installed service (zstack-kvm, zstack-storage, zstack-network), talking
HTTP on loopback.

The scenario runs in order (each step builds on the last, as an operator's day would):

1. the nodes find each other;
2. resources are created through every node;
3. a call through any node about a resource is answered by the resource's owner
   (``X-ZStack-Node`` names the node that handled it; the ring computed here says who owns it);
4. the node-to-node endpoint refuses requests without the cluster secret's signature;
5. ``kill -9`` of one node while it runs a job: within the detection time the survivors drop it,
   its job ends Failed, its hosts are reconnected by their new owners, and every API keeps
   working through the survivors;
6. the killed node is started again and takes its resources back;
7. VMs created concurrently through all three nodes get distinct IPs and leak no capacity.

Steps 2-6 use libvirt test-driver hosts (a private XML per host); the test driver keeps its state
in each process, which is enough for hosts but not for VMs (a VM would exist only in the process
that defined it), so step 7 runs on a real libvirtd that all three processes share.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from zstack_core.cluster import HashRing, wire
from zstack_core.errors import ErrorCode
from zstack_core.sdk import Client, ZStackApiError

from .conftest import _mariadb, drop_pg_database, new_pg_database

SECRET = "three-node-cluster-secret"
PASSWORD = "three-node-admin-password"
BEAT = 0.5
MISSED = 3
DETECTION = BEAT * MISSED
ZSTACK = Path(sys.executable).parent / "zstack"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """One ``zstack node start`` process, its data directory, port and log."""

    def __init__(self, name: str, base: Path, env: dict[str, str]) -> None:
        self.name = name
        self.data_dir = base / name
        self.log_path = base / f"{name}.log"
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uuid(self) -> str:
        return (self.data_dir / "node-uuid").read_text().strip()

    def start(self) -> None:
        cmd = [str(ZSTACK), "--data-dir", str(self.data_dir), "node", "start", "--host", "127.0.0.1",
               "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"node {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if requests.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"node {self.name} did not answer in 120s:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class SlowImageServer:
    """An HTTP server on loopback whose one file trickles out until :meth:`close`: an AddImage
    from it stays Running as long as we like."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        stop = self.stop

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(200)
                self.send_header("Content-Length", str(256 << 20))
                self.end_headers()
                try:
                    while not stop.wait(0.05):
                        self.wfile.write(b"\0" * 16384)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slow.raw"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def driver_xml(path: Path, cpus: int = 8, memory_mib: int = 8192) -> str:
    path.write_text(textwrap.dedent(f"""\
        <node>
          <cpu><mhz>2000</mhz><model>i686</model><active>{cpus}</active><nodes>1</nodes>
            <sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>
          <memory>{memory_mib * 1024}</memory>
        </node>
        """))
    return f"test://{path}"


class ThreeNodes:
    """The cluster under test and what the scenario learned along the way."""

    def __init__(self, base: Path, database_url: str) -> None:
        self.base = base
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
        env.update({
            "ZSTACK_DATABASE_URL": database_url,
            "ZSTACK_CLUSTER_SECRET": SECRET,
            "ZSTACK_ADMIN_PASSWORD": PASSWORD,
            "ZSTACK_NODE_LIBVIRT_URI": "test:///default",
            "ZSTACK_STORAGE_IMAGE_STORE_PATH": str(base / "images"),
            "PYTHONUNBUFFERED": "1",
        })
        self.nodes = [NodeProcess(name, base, env) for name in ("a", "b", "c")]
        self.session = ""
        self.zones: list[str] = []
        self.hosts: list[str] = []
        self.clusters: list[str] = []

    def client(self, node: NodeProcess) -> Client:
        return Client(node.url, session_uuid=self.session)

    def uuids(self, nodes: list[NodeProcess] | None = None) -> list[str]:
        return [n.uuid for n in (nodes or self.nodes)]

    def listed(self, via: NodeProcess) -> set[str]:
        return {inv["uuid"] for inv in self.client(via).call("QueryManagementNode") if inv["state"] == "Running"}

    def update_zone(self, via: NodeProcess, zone: str) -> requests.Response:
        return self.client(via).request("PUT", f"/v1/zones/{zone}/actions",
                                        body={"updateZone": {"description": f"touched via {via.name}"}})

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


def _start(base: Path, url: str) -> Iterator[ThreeNodes]:
    cluster = ThreeNodes(base, url)
    try:
        first = cluster.nodes[0]
        first.start()
        admin = Client(first.url)
        cluster.session = admin.login("admin", PASSWORD)["uuid"]
        c = cluster.client(first)
        c.call("UpdateGlobalConfig", category="managementServer", name="node.heartbeatInterval", value=BEAT)
        c.call("UpdateGlobalConfig", category="managementServer", name="node.heartbeatMissedLimit", value=MISSED)
        c.call("UpdateGlobalConfig", category="kvm", name="vm.syncInterval", value=3600)
        c.call("UpdateGlobalConfig", category="kvm", name="host.pingInterval", value=1.0)
        for node in cluster.nodes[1:]:
            node.start()
        yield cluster
    finally:
        cluster.stop()
        for node in cluster.nodes:
            if os.environ.get("CLUSTER_TEST_LOGS"):
                print(f"==== {node.name} ({node.log_path})\n{node.log()[-6000:]}")


@pytest.fixture(scope="class", params=["postgresql", "mariadb"])
def three(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreeNodes]:
    base = tmp_path_factory.mktemp(f"three-{request.param}")
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_url")
        url, name = new_pg_database(server)
        try:
            yield from _start(base, url)
        finally:
            drop_pg_database(server, name)
    else:
        server = request.getfixturevalue("mariadb_server")
        name = f"zs_{uuid.uuid4().hex[:12]}"
        _mariadb(server, f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        try:
            yield from _start(base, f"{server}/{name}")
        finally:
            _mariadb(server, f"DROP DATABASE IF EXISTS {name}")


def wait_for(check: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


class TestThreeNodeCluster:
    def test_1_the_nodes_find_each_other(self, three: ThreeNodes) -> None:
        everyone = set(three.uuids())
        assert len(everyone) == 3
        for node in three.nodes:
            wait_for(lambda n=node: three.listed(n) == everyone, 10, f"{node.name} lists all three nodes")

    def test_2_resources_are_created_through_any_node(self, three: ThreeNodes) -> None:
        a, b, c = three.nodes
        for i, (zone_via, cluster_via, host_via) in enumerate([(a, b, c), (b, c, a), (c, a, b)]):
            zone = three.client(zone_via).call("CreateZone", name=f"zone-{i}")["inventory"]
            cluster = three.client(cluster_via).call("CreateCluster", name=f"cluster-{i}",
                                                     zone_uuid=zone["uuid"], hypervisor_type="KVM")["inventory"]
            three.zones.append(zone["uuid"])
            three.clusters.append(cluster["uuid"])
            for j in range(2):
                url = driver_xml(three.base / f"host-{i}-{j}.xml")
                host = three.client(host_via).call("AddKVMHost", name=f"host-{i}-{j}", cluster_uuid=cluster["uuid"],
                                                   url=url)["inventory"]
                assert host["status"] == "Connected"
                three.hosts.append(host["uuid"])
        # Steps 5 and 6 are about what c owns: UUIDs are random, and c owns none of six hosts
        # about one time in eleven (none of three zones one in three), so add more until it does.
        ring, c = HashRing(three.uuids()), three.nodes[2]
        for extra in range(40):
            if any(ring.owner_of(z) == c.uuid for z in three.zones):
                break
            three.zones.append(three.client(a).call("CreateZone", name=f"zone-extra-{extra}")["inventory"]["uuid"])
        for extra in range(40):
            if any(ring.owner_of(h) == c.uuid for h in three.hosts):
                break
            url = driver_xml(three.base / f"host-extra-{extra}.xml")
            three.hosts.append(three.client(b).call("AddKVMHost", name=f"host-extra-{extra}",
                                                    cluster_uuid=three.clusters[0], url=url)["inventory"]["uuid"])
        assert any(ring.owner_of(z) == c.uuid for z in three.zones)
        assert any(ring.owner_of(h) == c.uuid for h in three.hosts)
        for node in three.nodes:  # every node sees what every other created
            zones = three.client(node).call("QueryZone")
            assert {z["uuid"] for z in zones} >= set(three.zones)
            hosts = three.client(node).call("QueryHost")
            assert {h["uuid"] for h in hosts} >= set(three.hosts)

    def test_3_a_call_through_any_node_is_answered_by_the_owner(self, three: ThreeNodes) -> None:
        ring = HashRing(three.uuids())
        by_uuid = {n.uuid: n for n in three.nodes}
        crossed = 0
        for zone in three.zones:
            owner = ring.owner_of(zone)
            for via in three.nodes:
                r = three.update_zone(via, zone)
                assert r.status_code == 200, r.text
                assert r.headers["X-ZStack-Node"] == owner, f"{zone} via {via.name}"
                crossed += via.uuid != owner
            # the owner's own log does not say it forwarded; the others' replies came from it
            assert owner in by_uuid
        assert crossed >= len(three.zones)  # each zone was reached through at least one non-owner

    def test_4_the_node_to_node_endpoint_refuses_outsiders(self, three: ThreeNodes) -> None:
        body = wire.dumps({"type": "zstack_kvm.api:APIUpdateZoneMsg", "service": "compute",
                           "body": {"uuid": three.zones[0], "description": "outsider"}})
        for node in three.nodes:
            url = node.url + "/v1/cluster/messages"
            for headers in ({}, {wire.SIGNATURE_HEADER: wire.sign(b"guessed", body)}):
                r = requests.post(url, data=body, headers=headers, timeout=10)
                assert r.status_code == 401, r.text
                assert r.json()["error"]["code"] == "MN.1002"
            # the same request signed with the cluster's secret is served
            r = requests.post(node.url + "/v1/cluster/ping", data=b"{}",
                              headers={wire.SIGNATURE_HEADER: wire.sign(SECRET.encode(), b"{}")}, timeout=10)
            assert r.status_code == 200 and r.json()["node"] == node.uuid
        zone = three.client(three.nodes[0]).call("QueryZone", conditions=[f"uuid={three.zones[0]}"])
        assert zone[0]["description"] != "outsider"

    def test_5_kill_9_the_survivors_take_over(self, three: ThreeNodes) -> None:
        a, b, c = three.nodes
        three_ring = HashRing(three.uuids())
        two_ring = HashRing(three.uuids([a, b]))
        c_hosts = [h for h in three.hosts if three_ring.owner_of(h) == c.uuid]
        assert c_hosts  # step 2 made sure
        slow = SlowImageServer()
        try:
            r = three.client(c).request("POST", "/v1/images", body={"params": {
                "name": "slow", "url": slow.url, "format": "raw"}})
            assert r.status_code == 202, r.text
            job = r.json()["jobId"]
            wait_for(lambda: three.client(c).request("GET", f"/v1/api-jobs/{job}").json().get("progress") is not None,
                     20, "the image download on c reports progress")
            c.kill()
            killed_at = time.monotonic()
            took = wait_for(lambda: three.listed(a) == {a.uuid, b.uuid}, DETECTION + 2 * BEAT + 3, "a and b drop c")
            # The survivor that found c dead removed its row and nudged the other; give the other
            # its beat (it takes at most one interval even if the nudge were lost).
            time.sleep(BEAT)
            print(f"c found dead after {took:.2f}s (detection time {DETECTION:g}s)")
            # the job c was running ends Failed, never stuck Running
            r = three.client(a).request("GET", f"/v1/api-jobs/{job}")
            assert r.status_code >= 400, r.text
            error = r.json()["error"]
            assert error["code"] == "SYS.1006" and error["cause"]["code"] == "MN.1005"
            assert c.uuid in error["cause"]["details"]
        finally:
            slow.close()
        # APIs keep working through the survivors; c's resources are answered by their new owners
        for zone in three.zones:
            for via in (a, b):
                r = three.update_zone(via, zone)
                assert r.status_code == 200, r.text
                assert r.headers["X-ZStack-Node"] == two_ring.owner_of(zone)
        # c's hosts are reconnected by the nodes that own them now
        for host in c_hosts:
            heir = a if two_ring.owner_of(host) == a.uuid else b
            said = f"host {host} is now managed by this node (its management node {c.uuid} left)"
            wait_for(lambda n=heir, said=said: said in n.log(), 10, f"{heir.name} takes over host {host}")
            wait_for(lambda h=host, n=heir: n.log().count(f"host {h} (") >= 1, 10, f"{heir.name} reconnects {host}")
        hosts = three.client(a).call("QueryHost")
        statuses = {h["uuid"]: h["status"] for h in hosts if h["uuid"] in three.hosts}
        assert statuses == dict.fromkeys(three.hosts, "Connected"), "\n".join(
            [f"{statuses}; c's hosts {c_hosts}"] + [f"--- {n.name}:\n{n.log()[-6000:]}" for n in (a, b)])
        print(f"kill -9 at {killed_at:.1f}: {len(c_hosts)} hosts of c reconnected by a and b")

    def test_6_the_killed_node_rejoins_and_takes_its_resources_back(self, three: ThreeNodes) -> None:
        a, b, c = three.nodes
        before = c.uuid
        c.start()
        assert c.uuid == before  # the same member: its UUID is kept in its data directory
        everyone = set(three.uuids())
        for node in three.nodes:
            wait_for(lambda n=node: three.listed(n) == everyone, 10, f"{node.name} lists c again")
        ring = HashRing(three.uuids())
        wait_for(lambda: all(three.update_zone(a, z).headers["X-ZStack-Node"] == ring.owner_of(z)
                             for z in three.zones), 5, "a forwards c's zones to c again")
        assert any(ring.owner_of(z) == c.uuid for z in three.zones + three.hosts + three.clusters)

    def test_7_concurrent_vm_creates_allocate_no_ip_twice_and_leak_no_capacity(
            self, three: ThreeNodes, libvirtd: str) -> None:
        """On a real libvirtd host (one hypervisor all three processes share): nine VMs asked for
        at once through the three nodes, with six free IPs. Six are created, each with its own
        IP; three are refused for want of an IP and leave nothing behind; deleting the six (each
        through nodes other than the one that created it) gives back every byte and address."""
        with QemuCloud(three, libvirtd) as cloud:
            # One VM first, so the image is already cached on the host: the first uploads of one
            # image into one pool from several nodes at once still race in zstack-storage (libvirt
            # refuses a pool's second upload: "pool has asynchronous jobs running").
            warm = three.client(three.nodes[0]).call(
                "CreateVmInstance", name="warm-up", cpu_num=1, memory_size=VM_MEMORY, image_uuid=cloud.image,
                cluster_uuid=cloud.cluster)["inventory"]["uuid"]
            three.client(three.nodes[1]).call("DestroyVmInstance", uuid=warm)
            three.client(three.nodes[2]).call("ExpungeVmInstance", uuid=warm)
            before = cloud.capacity()

            def create(i: int) -> dict[str, Any] | ErrorCode:
                via = three.nodes[i % 3]
                try:
                    return three.client(via).call(
                        "CreateVmInstance", name=f"vm-{i}", cpu_num=1, memory_size=VM_MEMORY,
                        image_uuid=cloud.image, l3_network_uuids=[cloud.l3], cluster_uuid=cloud.cluster)["inventory"]
                except ZStackApiError as exc:
                    return exc.error

            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(REQUESTED) as pool:
                outcomes = list(pool.map(create, range(REQUESTED)))
            vms = [o for o in outcomes if isinstance(o, dict)]
            refused = [o for o in outcomes if isinstance(o, ErrorCode)]
            cloud.vms = [v["uuid"] for v in vms]
            assert len(vms) == len(FREE_IPS), [str(r) for r in refused]
            assert all(r.caused("L3.1002") for r in refused), [str(r) for r in refused]
            ips = [nic["ip"] for vm in vms for nic in vm["vmNics"]]
            assert sorted(ips) == sorted(FREE_IPS)  # each address handed out once
            assert {vm["state"] for vm in vms} == {"Running"}
            # every node reads the same NICs from the database
            for node in three.nodes:
                nics = three.client(node).call("QueryVmNic", conditions=[f"l3NetworkUuid={cloud.l3}"])
                assert sorted(n["ip"] for n in nics) == sorted(ips)
            # the host lost exactly what the eight VMs took; refused creates took nothing
            memory, cpu, storage = cloud.capacity()
            assert (memory, cpu) == (before[0] - len(vms) * VM_MEMORY, before[1] - len(vms))
            assert storage < before[2]
            running = {d for d in virsh_domains() if d.removeprefix("zstack-") in cloud.vms}
            assert len(running) == len(vms)
            # deleting them, each through other nodes than created it, gives everything back
            def delete(i: int) -> None:
                three.client(three.nodes[(i + 1) % 3]).call("DestroyVmInstance", uuid=cloud.vms[i])
                three.client(three.nodes[(i + 2) % 3]).call("ExpungeVmInstance", uuid=cloud.vms[i])

            created = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(len(cloud.vms)) as pool:
                list(pool.map(delete, range(len(cloud.vms))))
            print(f"{len(vms)} VMs created through 3 nodes in {created - started:.1f}s, {len(refused)} refused "
                  f"(no free IP); deleted in {time.monotonic() - created:.1f}s")
            assert cloud.capacity() == before
            assert three.client(three.nodes[0]).call("QueryVmNic", conditions=[f"l3NetworkUuid={cloud.l3}"]) == []
            assert not {d for d in virsh_domains() if d.removeprefix("zstack-") in cloud.vms}
            cloud.vms = []


VM_MEMORY = 64 << 20
PHYS = "zs-cl-test0"
FREE_IPS = [f"10.77.0.{i}" for i in range(10, 16)]
REQUESTED = 9


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr}")
    return result


def virsh_domains() -> set[str]:
    out = sh("virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


class QemuCloud:
    """A zone with one real ``qemu:///system`` host, local primary storage in a temporary
    directory, a blank image, and an L3 network bridged onto a veth with six free IPs;
    everything removed afterwards (through the APIs, then by hand for what a failure left)."""

    def __init__(self, three: ThreeNodes, uri: str) -> None:
        self.three = three
        self.uri = uri
        self.vms: list[str] = []

    def __enter__(self) -> QemuCloud:
        three, api = self.three, self.three.client(self.three.nodes[0])
        sh("ip", "link", "add", PHYS, "type", "veth", "peer", "name", PHYS + "p")  # no dummy driver here
        sh("ip", "link", "set", PHYS, "up")
        self.zone = api.call("CreateZone", name="qemu-zone")["inventory"]["uuid"]
        self.cluster = api.call("CreateCluster", name="qemu-cluster", zone_uuid=self.zone,
                                hypervisor_type="KVM")["inventory"]["uuid"]
        self.host = api.call("AddKVMHost", name="qemu-host", cluster_uuid=self.cluster, url=self.uri)["inventory"]["uuid"]
        # QEMU runs as its own user: the pool lives where it may enter (pytest's tmp is 0700).
        self.pool_dir = Path(tempfile.mkdtemp(prefix="zstack-cluster-ps-"))
        self.pool_dir.chmod(0o755)
        self.ps = api.call("AddLocalPrimaryStorage", name="ps", zone_uuid=self.zone,
                           url=str(self.pool_dir / "ps"))["inventory"]["uuid"]
        api.call("AttachPrimaryStorageToCluster", primary_storage_uuid=self.ps, cluster_uuid=self.cluster)
        image_file = three.base / "blank.raw"
        with image_file.open("wb") as f:
            f.truncate(1 << 20)
        self.image = api.call("AddImage", name="blank", url=str(image_file), format="raw")["inventory"]["uuid"]
        l2 = api.call("CreateL2NoVlanNetwork", name="l2", zone_uuid=self.zone, physical_interface=PHYS)["inventory"]
        api.call("AttachL2NetworkToCluster", l2_network_uuid=l2["uuid"], cluster_uuid=self.cluster)
        self.l2 = l2["uuid"]
        self.l3 = api.call("CreateL3Network", name="l3", l2_network_uuid=self.l2, enable_dhcp=False)["inventory"]["uuid"]
        api.call("AddIpRange", l3_network_uuid=self.l3, start_ip=FREE_IPS[0], end_ip=FREE_IPS[-1],
                 netmask="255.255.255.0", gateway="10.77.0.1")
        return self

    def capacity(self) -> tuple[int, int, int]:
        api = self.three.client(self.three.nodes[1])
        host = api.call("QueryHost", conditions=[f"uuid={self.host}"])[0]
        ps = api.call("QueryPrimaryStorage", conditions=[f"uuid={self.ps}"])[0]
        return host["availableMemory"], host["availableCpu"], ps["availableCapacity"]

    def __exit__(self, *exc: object) -> None:
        api = self.three.client(self.three.nodes[0])
        for vm in self.vms:
            for name in ("DestroyVmInstance", "ExpungeVmInstance"):
                try:
                    api.call(name, uuid=vm)
                except ZStackApiError:
                    pass
        for name, params in (("DeleteZone", {"uuid": self.zone}), ("DeleteL2Network", {"uuid": getattr(self, "l2", "")})):
            try:
                api.call(name, **params)
            except (ZStackApiError, AttributeError):
                pass
        for vm in self.vms:  # whatever the APIs could not remove
            sh("virsh", "-c", "qemu:///system", "destroy", f"zstack-{vm}", check=False)
            sh("virsh", "-c", "qemu:///system", "undefine", f"zstack-{vm}", check=False)
        sh("ip", "link", "del", f"br_{PHYS}", check=False)
        sh("ip", "link", "del", PHYS, check=False)
        if hasattr(self, "pool_dir"):
            shutil.rmtree(self.pool_dir, ignore_errors=True)
