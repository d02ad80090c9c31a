"""A management node serving its HTTP API on a free loopback port, for every HTTP test.

The node loads the installed plugins (zstack-kvm, zstack-storage, zstack-network: whatever APIs
they declare are tested too) plus ``widget_plugin.py`` here, and runs on its own event loop in a
background thread (:class:`~zstack_core.SyncManagementNode`), so tests are plain synchronous code
that talks real HTTP with ``requests``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from zstack_core import SyncManagementNode
from zstack_core.node import ManagementNode

HERE = Path(__file__).resolve().parent
ADMIN_PASSWORD = "admin-password-for-tests"


def _load_widget_plugin() -> ModuleType:
    # tests/http has no __init__.py (a package named "http" would shadow the standard library's),
    # so the plugin module is loaded by path under a name of its own.
    name = "zstack_http_tests_widget_plugin"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "widget_plugin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


widget_plugin = _load_widget_plugin()


class Server:
    """The node under test, its URL, and helpers to talk to it."""

    def __init__(self, sync: SyncManagementNode, url: str) -> None:
        self.sync = sync
        self.url = url
        self.http = requests.Session()
        self.admin_session = self.login("admin", ADMIN_PASSWORD)

    @property
    def node(self) -> ManagementNode:
        assert self.sync.node is not None
        return self.sync.node

    def request(self, method: str, path: str, session: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if session is not None:
            headers["Authorization"] = f"OAuth {session}"
        return self.http.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def login(self, name: str, password: str) -> str:
        r = self.request("PUT", "/v1/accounts/login",
                         json={"logInByAccount": {"accountName": name, "password": password}})
        assert r.status_code == 200, r.text
        return str(r.json()["inventory"]["uuid"])

    def new_account(self, prefix: str = "user") -> tuple[str, str]:
        """A new Normal account: ``(account uuid, session uuid)``."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        r = self.request("POST", "/v1/accounts", self.admin_session,
                         json={"params": {"name": name, "password": "password-" + name}})
        assert r.status_code == 200, r.text
        return str(r.json()["inventory"]["uuid"]), self.login(name, "password-" + name)

    def create_widget(self, session: str, name: str = "w", **params: Any) -> dict[str, Any]:
        r = self.request("POST", "/v1/widgets", session, json={"params": {"name": name, **params}})
        assert r.status_code == 200, r.text
        return dict(r.json()["inventory"])


# Per module, not per session: a node left running would keep working (host pings, libvirt
# reconciliation) on the process-wide libvirt test driver while other packages' tests use it.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("ZSTACK_")}
    for k in saved:
        del os.environ[k]  # no setting leaks in from the developer's shell
    data_dir = tmp_path_factory.mktemp("http-node")
    sync = SyncManagementNode(plugins=[widget_plugin], data_dir=data_dir,
                              settings={"identity.admin_password": ADMIN_PASSWORD,
                                        "node.libvirt_uri": "test:///default"})
    sync.start()
    try:
        http = sync.run(sync.node.start_http("127.0.0.1", 0))  # type: ignore[union-attr]
        yield Server(sync, http.url)
    finally:
        sync.stop()
        os.environ.update(saved)
