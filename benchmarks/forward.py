"""A forwarded call beside a local call, in the same run.

    python benchmarks/forward.py [--quick] [--database-url postgresql://...]

Two management nodes in this process share one database and serve HTTP on loopback. Rows:

(a) ``CloudBus.call`` of a message about a resource this node owns (the handler suspends once,
    as real handlers do): the local path, with the ring consulted.
(b) the same message about a resource the other node owns: serialized, signed, posted over
    HTTP to the owner, handled there, and the reply sent back the same way.
(b*) (b) with 50 concurrent callers (throughput of forwarding).
(c0)/(c) an API call (``node.api_call``: build, interceptors, bus) about a resource this node /
    the other node owns.

Both nodes share this process's one event loop, so concurrent callers (b*) cannot add
throughput here (each request's two halves run on the same core); separate processes would.

Without ``--database-url`` a throwaway PostgreSQL 15 cluster is started (as the tests do).
The ratio (b)/(a) is what forwarding costs; both run on the same loop in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import attrs

from zstack_core import (
    APIMessage,
    APIReply,
    ApiRegistration,
    ManagementNode,
    MessageReply,
    NeedReplyMessage,
    Service,
    handles,
    hookimpl,
)


@attrs.define(kw_only=True)
class WhereAmIMsg(NeedReplyMessage):
    """A message about a gadget; the reply names the node that handled it."""

    SERVICE_ID = "gadgets"
    gadget_uuid: str


@attrs.define(kw_only=True)
class WhereAmIReply(MessageReply):
    node_uuid: str = ""


@attrs.define(kw_only=True)
class APIGetGadgetMsg(APIMessage):
    SERVICE_ID = "gadgets"
    uuid: str


@attrs.define(kw_only=True)
class APIGetGadgetReply(APIReply):
    node_uuid: str = ""


class GadgetService(Service):
    id = "gadgets"

    @handles(WhereAmIMsg)
    async def where(self, msg: WhereAmIMsg) -> WhereAmIReply:
        await asyncio.sleep(0)  # a real handler waits for something
        return WhereAmIReply(node_uuid=self.node.uuid)

    @handles(APIGetGadgetMsg)
    async def get(self, msg: APIGetGadgetMsg) -> APIGetGadgetReply:
        await asyncio.sleep(0)
        return APIGetGadgetReply(node_uuid=self.node.uuid)


class GadgetPlugin:
    @hookimpl
    def zstack_services(self) -> Sequence[Service]:
        return [GadgetService()]

    @hookimpl
    def zstack_api_messages(self) -> Sequence[ApiRegistration]:
        return [ApiRegistration(message=APIGetGadgetMsg, resource="Gadget", route=("GET", "/v1/gadgets/{uuid}"))]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
Timer = Callable[[int], Awaitable[float]]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="zstack-bench-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    data = str(base / "data")
    run(str(PG_BIN / "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
    run(str(PG_BIN / "pg_ctl"), "-D", data, "-l", str(base / "log"), "-w", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "zstack")
        yield f"postgresql://postgres@127.0.0.1:{port}/zstack"
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def bus_calls(node: ManagementNode, resource: str) -> Timer:
    async def run(n: int) -> float:
        call = node.bus.call
        start = time.perf_counter()
        for _ in range(n):
            reply = await call(WhereAmIMsg(gadget_uuid=resource), resource_uuid=resource)
        elapsed = time.perf_counter() - start
        assert reply.success, reply.error
        return elapsed

    return run


def bus_calls_concurrent(node: ManagementNode, resource: str, callers: int) -> Timer:
    async def run(n: int) -> float:
        per = max(n // callers, 1)

        async def caller() -> None:
            for _ in range(per):
                reply = await node.bus.call(WhereAmIMsg(gadget_uuid=resource), resource_uuid=resource)
                assert reply.success, reply.error

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return (time.perf_counter() - start) * n / (per * callers)

    return run


def api_calls(node: ManagementNode, resource: str, owner: str) -> Timer:
    async def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            reply = await node.api_call("GetGadget", uuid=resource)
        elapsed = time.perf_counter() - start
        assert reply.node_uuid == owner
        return elapsed

    return run


async def best_of(timer: Timer, n: int, repeat: int) -> float:
    await timer(max(n // 10, 1))
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        best = min(best, await timer(n) / n)
    return best


async def main(url: str, quick: bool) -> None:
    n_local, n_remote, repeat = (2_000, 300, 3) if quick else (20_000, 2_000, 5)
    with tempfile.TemporaryDirectory(prefix="zstack-bench-") as tmp:
        nodes = []
        for name in ("a", "b"):
            node = ManagementNode(plugins=[GadgetPlugin()], load_entry_points=False, data_dir=Path(tmp) / name,
                                  settings={"database.url": url})
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                await node.start()
                await node.start_http("127.0.0.1", 0)
            nodes.append(node)
        a, b = nodes
        try:
            for _ in range(2):
                for node in nodes:
                    await node.cluster.beat()
            assert a.cluster.members == {a.uuid, b.uuid}
            ours = next(u for u in iter(lambda: uuid.uuid4().hex, None) if a.cluster.owns(u))
            theirs = next(u for u in iter(lambda: uuid.uuid4().hex, None) if b.cluster.owns(u))
            local = await best_of(bus_calls(a, ours), n_local, repeat)
            remote = await best_of(bus_calls(a, theirs), n_remote, repeat)
            remote_concurrent = await best_of(bus_calls_concurrent(a, theirs, 50), n_remote, repeat)
            api_local = await best_of(api_calls(a, ours, a.uuid), n_local // 2, repeat)
            api_remote = await best_of(api_calls(a, theirs, b.uuid), n_remote, repeat)
        finally:
            for node in reversed(nodes):
                await node.stop()

    def row(name: str, seconds: float) -> str:
        return f"{name:<62} {seconds * 1e6:>10.1f} {1 / seconds:>10,.0f} {seconds / local:>8.1f}x"

    print(f"{'measurement':<62} {'us/call':>10} {'calls/s':>10} {'vs (a)':>9}")
    print("-" * 94)
    print(row("(a) bus.call about a resource this node owns (local)", local))
    print(row("(b) bus.call about a resource the other node owns (forwarded)", remote))
    print(row("(b*) the same, 50 concurrent callers", remote_concurrent))
    print(row("(c0) API call through the mediator, owner is this node", api_local))
    print(row("(c) API call through the mediator, owner is the other node", api_remote))
    print(f"\nforwarding costs {remote / local:.0f}x a local bus call ({(remote - local) * 1e6:.0f} us more per call; "
          f"an API call {api_remote / api_local:.1f}x): serialize + sign + HTTP/1.1 over loopback + verify + "
          f"structure, both ways")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--database-url", help="an empty PostgreSQL/MariaDB database (default: a throwaway PostgreSQL)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.database_url:
        asyncio.run(main(args.database_url, args.quick))
    else:
        with throwaway_postgres() as pg:
            asyncio.run(main(pg, args.quick))
