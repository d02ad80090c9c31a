"""Security: sessions, accounts kept apart, the node-to-node endpoint, secrets kept out of logs
and responses, loopback by default, infrastructure APIs for admins only.

(tests/http enumerates every API without a session and tests ownership API by API; this adds
what concerns the node as a whole.)

The secrets scenario runs a node on PostgreSQL through a URL with a password in it, adds a host
by a libvirt URI with a password in it (its connection fails: nothing listens there), logs in
an admin and a tenant, uses and ends their sessions, and captures every log record of the
process (DEBUG and up, every logger) and every HTTP response body. None of the passwords, the
cluster secret or a session UUID may appear in any of them, except the one place a session UUID
must appear: the reply of the login that created it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from zstack_core import ManagementNode
from zstack_core.identity import SESSION_FREE

from .conftest import ADMIN_PASSWORD, PgServer, driver_xml

HOST_PW = "Host-Pw-5150"
DB_PW = "Db-Pw-7781"
TENANT_PW = "Tenant-Pw-0042"
CLUSTER_SECRET = "Cluster-Secret-9911"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("urllib3"):
            return  # the test's own HTTP client logging the URLs it asks for, not the node
        self.lines.append(self.format(record))


@pytest.fixture
def capture_all_logs() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # peewee logs every SQL statement with its parameters at DEBUG: a debugging aid that shows
    # whatever a query compares with (session UUIDs included). It stays at INFO here, as the
    # node's own logging configuration leaves it.
    peewee_log = logging.getLogger("peewee")
    old_peewee = peewee_log.level
    peewee_log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        peewee_log.setLevel(old_peewee)


class Recorder:
    """A requests session that keeps every response body (and which were logins)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.bodies: list[tuple[str, str]] = []

    def call(self, method: str, path: str, session: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if session:
            headers["Authorization"] = f"OAuth {session}"
        r = self.http.request(method, self.url + path, headers=headers, timeout=60, **kwargs)
        self.bodies.append((f"{method} {path}", r.text))
        return r

    def wait_job(self, r: requests.Response, session: str) -> requests.Response:
        while r.status_code == 202:
            r = self.call("GET", r.headers["Location"], session)
        return r

    def login(self, name: str, password: str) -> str:
        r = self.call("PUT", "/v1/accounts/login", json={"logInByAccount": {"accountName": name, "password": password}})
        assert r.status_code == 200, r.text
        return str(r.json()["inventory"]["uuid"])


async def test_secrets_never_appear_in_logs_or_responses(pg_server: PgServer, tmp_path: Path,
                                                         capture_all_logs: Capture) -> None:
    db_url = pg_server.new_database(f"sec{uuidlib.uuid4().hex[:8]}", password=DB_PW)
    test_host = driver_xml(tmp_path / "driver.xml")
    node = ManagementNode(data_dir=tmp_path / "node", config={},
                          settings={"identity.admin_password": ADMIN_PASSWORD, "database.url": db_url,
                                    "node.libvirt_uri": test_host, "cluster.secret": CLUSTER_SECRET})
    await node.start()
    sessions: list[str] = []
    try:
        http = await node.start_http("127.0.0.1", 0)
        rec = Recorder(http.url)

        def scenario() -> None:
            admin = rec.login("admin", ADMIN_PASSWORD)
            sessions.append(admin)
            zone = rec.call("POST", "/v1/zones", admin, json={"params": {"name": "z"}}).json()["inventory"]["uuid"]
            cluster = rec.call("POST", "/v1/clusters", admin,
                               json={"params": {"name": "c", "zoneUuid": zone}}).json()["inventory"]["uuid"]
            # A host whose URI carries a password; nothing listens there, so it fails and says why.
            bad = rec.wait_job(rec.call("POST", "/v1/hosts/kvm", admin, json={"params": {
                "name": "secret-host", "clusterUuid": cluster,
                "url": f"qemu+tcp://alice:{HOST_PW}@127.0.0.1:1/system"}}), admin)
            assert bad.status_code >= 400 and "alice:***@127.0.0.1" in bad.text, bad.text
            # One that connects, its URI with a password too (the test driver ignores it): the
            # node logs "host ... connected" with its URI and shows it in QueryHost.
            with_pw = test_host.replace("test://", f"test://alice:{HOST_PW}@")
            good = rec.wait_job(rec.call("POST", "/v1/hosts/kvm", admin, json={"params": {
                "name": "h", "clusterUuid": cluster, "url": with_pw}}), admin)
            assert good.status_code == 200, good.text
            hosts = rec.call("GET", "/v1/hosts", admin).json()["inventories"]
            assert [h["managementUrl"] for h in hosts] == [with_pw.replace(HOST_PW, "***")]
            rec.call("POST", "/v1/accounts", admin, json={"params": {"name": "tenant", "password": TENANT_PW}})
            tenant = rec.login("tenant", TENANT_PW)
            sessions.append(tenant)
            rec.call("GET", "/v1/zones", tenant)
            rec.call("GET", f"/v1/accounts/sessions/{tenant}/valid", tenant)
            rec.call("GET", "/v1/global-configurations", admin)
            rec.call("PUT", "/v1/accounts/login", json={"logInByAccount": {"accountName": "tenant", "password": "wrong"}})
            rec.call("DELETE", "/v1/accounts/sessions", tenant)
            rec.call("GET", "/v1/zones", tenant)  # the ended session: 401
            rec.call("GET", "/v1/consistency-report", admin)
            rec.call("POST", "/v1/cluster/messages", data=b"{}")  # no signature

        await asyncio.to_thread(scenario)
        await asyncio.sleep(0.5)  # background work (host tracker) logs too
    finally:
        await node.stop()
    logs = "\n".join(capture_all_logs.lines)
    assert "test://alice:***@/" in logs  # the connected host's URI was logged, redacted
    secrets = {"host password": HOST_PW, "database password": DB_PW, "admin password": ADMIN_PASSWORD,
               "tenant password": TENANT_PW, "cluster secret": CLUSTER_SECRET}
    secrets.update({f"session {i}": s for i, s in enumerate(sessions)})
    leaks = [f"{what} in the log: {line[:300]}" for what, value in secrets.items()
             for line in capture_all_logs.lines if value in line]
    for request, body in rec.bodies:
        for what, value in secrets.items():
            if value not in body:
                continue
            if request == "PUT /v1/accounts/login" and what.startswith("session"):
                continue  # the login reply is where a session UUID is handed out
            leaks.append(f"{what} in the response to {request}: {body[:300]}")
    assert not leaks, "\n".join(leaks)
    assert len(rec.bodies) >= 15 and len(capture_all_logs.lines) > 10


def test_only_login_and_session_validation_are_session_free() -> None:
    node = ManagementNode(config={}, data_dir="/tmp/zstack-sec-inspect")
    node.inspect()
    free = sorted(r.name for r in node.api.registrations.values() if issubclass(r.message, SESSION_FREE))
    assert free == ["LogInByAccount", "ValidateSession"]


ADMIN_ONLY = {
    # compute
    "CreateZone", "DeleteZone", "UpdateZone", "ChangeZoneState", "CreateCluster", "DeleteCluster", "UpdateCluster",
    "ChangeClusterState", "AddKVMHost", "DeleteHost", "UpdateHost", "ChangeHostState", "ReconnectHost",
    # storage
    "AddLocalPrimaryStorage", "AttachPrimaryStorageToCluster", "DetachPrimaryStorageFromCluster",
    "ReconnectPrimaryStorage", "DeletePrimaryStorage",
    # network
    "CreateL2NoVlanNetwork", "CreateL2VlanNetwork", "DeleteL2Network", "AttachL2NetworkToCluster",
    "DetachL2NetworkFromCluster", "AddIpRange", "AddIpRangeByNetworkCidr", "DeleteIpRange",
    # kernel
    "UpdateGlobalConfig", "ResetGlobalConfig", "UpdateResourceConfig", "DeleteResourceConfig", "CheckConsistency",
}


async def test_infrastructure_apis_are_admin_only(tmp_path: Path) -> None:
    node = ManagementNode(config={}, data_dir=tmp_path / "node",
                          settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": "test:///default"})
    node.inspect()
    marked = {name for name, reg in node.api.registrations.items() if reg.admin_only}
    assert ADMIN_ONLY <= marked, sorted(ADMIN_ONLY - marked)
    node = ManagementNode(config={}, data_dir=tmp_path / "node",
                          settings={"identity.admin_password": ADMIN_PASSWORD})
    async with node:
        await node.api_call("CreateAccount", name="tenant", password=TENANT_PW)
        session = (await node.api_call("LogInByAccount", accountName="tenant", password=TENANT_PW)).inventory.uuid
        refused = []
        for name in sorted(ADMIN_ONLY):
            cls = node.api.message_class(name)
            import attrs

            body = {a.name: _dummy(a.type) for a in attrs.fields(cls)
                    if a.default is attrs.NOTHING and a.name not in ("id", "headers")}
            msg = cls(**body)
            msg.session_uuid = session
            reply = await node.api.call(msg)
            refused.append((name, reply.error.code if reply.error else "accepted"))
        assert all(code == "SYS.1012" for _, code in refused), refused


def _dummy(kind: Any) -> Any:
    text = str(kind)
    if "int" in text:
        return 1
    if "bool" in text:
        return False
    if "list" in text:
        return []
    return "0" * 32


async def test_accounts_cannot_reach_each_others_resources(tmp_path: Path) -> None:
    url = driver_xml(tmp_path / "driver.xml")
    node = ManagementNode(config={}, data_dir=tmp_path / "node",
                          settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": url})
    async with node:
        zone = (await node.api_call("CreateZone", name="z")).inventory
        cluster = (await node.api_call("CreateCluster", name="c", zoneUuid=zone.uuid)).inventory
        await node.api_call("AddKVMHost", name="h", clusterUuid=cluster.uuid, url=url)
        sessions = {}
        for name in ("alice", "bob"):
            await node.api_call("CreateAccount", name=name, password=f"{name}-password")
            sessions[name] = (await node.api_call("LogInByAccount", accountName=name,
                                                  password=f"{name}-password")).inventory.uuid
        vm = (await node.api_call("CreateVmInstance", name="alices", cpuNum=1, memorySize=64 << 20,
                                  session_uuid=sessions["alice"])).inventory
        bob = sessions["bob"]
        assert (await node.api_call("QueryVmInstance", session_uuid=bob)).inventories == []
        for api in ("StopVmInstance", "DestroyVmInstance", "RebootVmInstance", "UpdateVmInstance"):
            msg = node.api.build(api, {"uuid": vm.uuid})
            msg.session_uuid = bob
            reply = await node.api.call(msg)
            assert reply.error is not None and reply.error.code in ("SYS.1012", "SYS.1004"), (api, reply.error)
        mine = (await node.api_call("QueryVmInstance", session_uuid=sessions["alice"])).inventories
        assert [v.uuid for v in mine] == [vm.uuid] and mine[0].state == "Running"


def _own_address() -> str | None:
    """An address of this machine that is not loopback (its own interface: no traffic leaves)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None


async def test_the_api_listens_on_loopback_unless_configured(tmp_path: Path) -> None:
    node = ManagementNode(config={}, data_dir=tmp_path / "node", settings={"identity.admin_password": ADMIN_PASSWORD})
    async with node:
        assert node.properties["api.host"] == "127.0.0.1"
        http = await node.start_http(port=0)
        assert http.host == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", http.port), timeout=5):
            pass
        other = _own_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, http.port), timeout=5).close()


async def test_the_node_to_node_endpoint_refuses_requests_without_the_cluster_secret(tmp_path: Path) -> None:
    node = ManagementNode(config={}, data_dir=tmp_path / "node",
                          settings={"identity.admin_password": ADMIN_PASSWORD, "cluster.secret": CLUSTER_SECRET})
    async with node:
        http = await node.start_http("127.0.0.1", 0)

        def probe() -> list[tuple[str, int, str]]:
            out = []
            for path in ("/v1/cluster/messages", "/v1/cluster/events", "/v1/cluster/configs", "/v1/cluster/ping"):
                r = requests.post(http.url + path, data=json.dumps({"type": "x"}), timeout=30,
                                  headers={"Content-Type": "application/json", "X-ZStack-Signature": "0" * 64})
                out.append((path, r.status_code, r.text))
                r = requests.post(http.url + path, data=b"{}", timeout=30)
                out.append((path, r.status_code, r.text))
            return out

        for path, status, text in await asyncio.to_thread(probe):
            assert status in (401, 403), (path, status, text)
            assert CLUSTER_SECRET not in text
