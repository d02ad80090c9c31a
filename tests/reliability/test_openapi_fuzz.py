"""schemathesis against the node's own OpenAPI document: every operation, with an admin session.

The node serves every installed plugin's APIs on a loopback port, with a zone, a cluster and a
host on a private libvirt test-driver instance so that some calls reach real work. For each
operation of ``/v1/openapi.json`` schemathesis generates requests from the document (valid ones
and, in a second pass, ones the document says are invalid) and every response must:

* not be a 5xx (``not_a_server_error``): bad input is the caller's fault and says so with a 4xx;
* match the document: status code, content type, headers and body schema.

Nothing reaches outside this machine: calls that name a place to connect to are pointed at
local ones before they are sent (a host's libvirt URI at a test-driver file, an image URL at a
local file, a primary storage directory under the test's own directory); everything else about
them is as generated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from zstack_core import SyncManagementNode

from .conftest import ADMIN_PASSWORD, driver_xml

EXAMPLES = int(os.environ.get("ZSTACK_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


class Server:
    def __init__(self, sync: SyncManagementNode, url: str, base: Path) -> None:
        self.sync, self.url, self.base = sync, url, base
        self.http = requests.Session()
        self.session = ""
        self.relogin()

    def relogin(self) -> None:
        r = self.http.put(self.url + "/v1/accounts/login", timeout=30,
                          json={"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}})
        assert r.status_code == 200, r.text
        self.session = r.json()["inventory"]["uuid"]

    def session_alive(self) -> bool:
        r = self.http.get(f"{self.url}/v1/accounts/sessions/{self.session}/valid", timeout=30,
                          headers={"Authorization": f"OAuth {self.session}"})
        return r.status_code == 200 and bool(r.json().get("valid"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("fuzz")
    saved = {k: v for k, v in os.environ.items() if k.startswith("ZSTACK_")}
    for k in saved:
        del os.environ[k]
    url = driver_xml(base / "driver.xml")
    sync = SyncManagementNode(data_dir=base / "node", config={},
                              settings={"identity.admin_password": ADMIN_PASSWORD, "node.libvirt_uri": url})
    sync.start()
    try:
        zone = sync.api_call("CreateZone", name="zone").inventory
        cluster = sync.api_call("CreateCluster", name="cluster", zoneUuid=zone.uuid).inventory
        sync.api_call("AddKVMHost", name="host", clusterUuid=cluster.uuid, url=url)
        http = sync.run(sync.node.start_http("127.0.0.1", 0))  # type: ignore[union-attr]
        yield Server(sync, http.url, base)
    finally:
        sync.stop()
        os.environ.update(saved)


def keep_local(server: Server, path: str, body: Any) -> Any:
    """Point what a generated call would connect to at this machine (see the module's doc)."""
    if not isinstance(body, dict):
        return body
    inner = body.get("params")
    if not isinstance(inner, dict):
        return body
    if path == "/v1/hosts/kvm":
        inner.pop("managementIp", None)
        inner["url"] = driver_xml(server.base / "fuzz-host.xml")
    elif path == "/v1/images" and "url" in inner:
        image = server.base / "fuzz-image.raw"
        image.write_bytes(b"\0" * 4096)
        inner["url"] = str(image)
    elif path == "/v1/primary-storage/local-storage" and "url" in inner:
        inner["url"] = str(server.base / "fuzz-ps")
    return body


def operations(server_url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(server_url + "/v1/openapi.json")
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def _wire_is_always_valid(schema: dict[str, Any]) -> bool:
    """A query parameter every URL value satisfies: a string, or an array of strings."""
    if schema.get("type") == "string" and not (set(schema) & {"enum", "pattern", "format", "minLength", "maxLength"}):
        return True
    return schema.get("type") == "array" and _wire_is_always_valid(schema.get("items", {}))


def only_unrefusable_query_negated(case: Any, op: Any) -> bool:
    """True when the only part of ``case`` generated as invalid is its query string, and every
    query parameter of ``op`` takes any string: what schemathesis meant as ``false`` (not a
    string) arrives as the valid string "false", and accepting it is right. schemathesis itself
    still flags it (its issue #3056, "false positives in negative_data_rejection for array of
    strings query parameters")."""
    meta = getattr(case, "meta", None)
    if meta is None:
        return False
    negated = {getattr(loc, "value", loc) for loc, info in meta.components.items()
               if info.mode == schemathesis.GenerationMode.NEGATIVE}
    # The only header is Authorization, and every call sends a valid one over what was generated.
    if negated - {"header"} != {"query"}:
        return False
    params = [p for p in op.definition.raw.get("parameters", []) if p.get("in") == "query"]
    return bool(params) and all(_wire_is_always_valid(p.get("schema", {})) for p in params)


def run_operation(server: Server, op: Any, mode: schemathesis.GenerationMode, failures: list[str]) -> int:
    """Generate and send ``EXAMPLES`` cases of ``op``; record failures; return how many were sent."""
    sent = 0

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=op.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        nonlocal sent
        case.body = keep_local(server, op.path, case.body)
        headers = {"Authorization": f"OAuth {server.session}"}
        response = case.call(base_url=server.url, headers=headers, timeout=60)
        sent += 1
        negative = mode == schemathesis.GenerationMode.NEGATIVE and not only_unrefusable_query_negated(case, op)
        checks = CHECKS + ([negative_data_rejection] if negative else [])
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except AssertionError as exc:
            failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:1500]}")
        if response.status_code == 401 or (op.path == "/v1/accounts/sessions" and op.method.upper() == "DELETE"):
            if not server.session_alive():  # a generated LogOut ended our session: take a new one
                server.relogin()

    try:
        fuzz()
    except Unsatisfiable:
        if mode == schemathesis.GenerationMode.POSITIVE:
            raise
        # Nothing about this operation can be invalid (no parameters, no body).
    return sent


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["valid-input", "invalid-input"])
def test_every_operation_answers_within_its_document(server: Server, mode: schemathesis.GenerationMode) -> None:
    ops = operations(server.url)
    assert len(ops) > 60
    failures: list[str] = []
    sent = {f"{op.method.upper()} {op.path}": run_operation(server, op, mode, failures) for op in ops}
    print(f"\nOPENAPI FUZZ {mode.value}: {len(ops)} operations, {sum(sent.values())} requests")
    if mode == schemathesis.GenerationMode.POSITIVE:
        assert all(n > 0 for n in sent.values()), [k for k, n in sent.items() if n == 0]
    else:
        assert sum(1 for n in sent.values() if n > 0) > len(ops) * 0.8
    assert not failures, "\n\n".join(failures[:20]) + f"\n\n({len(failures)} failures)"
