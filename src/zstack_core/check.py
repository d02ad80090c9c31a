"""The consistency checker (``zstack check``): does the database agree with the hypervisors?

A control plane must never lose track of a VM, a volume, an address or capacity, whatever
failed. The checker compares what the database records with what every connected host really
has, and with the database's own bookkeeping (capacity sums, IPs held by NICs that exist...).
It changes nothing; it reports :class:`Finding` objects.

The kernel knows no service, so the checks themselves come from the services, each about what it
owns, through the registration hook ``zstack_consistency_checks``: compute compares domains with
VM rows and host capacity with the VMs placed there, storage compares pool volumes with volume
rows and primary-storage capacity with the volumes and image caches that hold it, network
compares used IPs with NICs. The kernel adds its own (ownership and system tags of resources
that no longer exist). A check talks to hosts through :class:`CheckContext`, which reaches them
only with ``HostRunMsg`` (the connection compute owns) and finds resources with
``node.query.find``.

Use it from Python::

    report = await check(node)
    if not report.ok:
        for finding in report.findings:
            print(finding)

from the command line (``zstack check``, exit status 1 when anything is found), or over the API
(``CheckConsistency``, admin only). Run it when the node is quiet: an operation in flight (a VM
being created) is, for a moment, exactly a disagreement. ``confirm=True`` checks twice and keeps
only what both passes found.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .api import ApiRegistration
from .errors import ErrorCode, SysErrors, ZStackError
from .messages import APIMessage, APIReply
from .service import Service, handles

if TYPE_CHECKING:
    from .node import ManagementNode

__all__ = [
    "APICheckConsistencyMsg",
    "APICheckConsistencyReply",
    "CheckContext",
    "CheckFailure",
    "ConsistencyCheck",
    "ConsistencyReport",
    "Finding",
    "check",
]

log = logging.getLogger("zstack.check")


@attrs.frozen(kw_only=True)
class Finding:
    """One disagreement: what kind, about which resource, where, and what was seen.

    ``kind`` is a short stable name (``orphan-domain``, ``missing-volume-file``,
    ``capacity-mismatch``...) so scripts can count them; ``details`` is for people.
    """

    check: str
    kind: str
    resource_type: str
    resource_uuid: str | None = None
    host_uuid: str | None = None
    details: str = ""
    plugin: str = ""

    def key(self) -> tuple[str, str, str | None, str | None]:
        """What makes two findings the same one (for ``confirm``)."""
        return (self.check, self.kind, self.resource_uuid, self.host_uuid)

    def __str__(self) -> str:
        where = f" on host {self.host_uuid}" if self.host_uuid else ""
        what = f"{self.resource_type} {self.resource_uuid}" if self.resource_uuid else self.resource_type
        return f"[{self.check}] {self.kind}: {what}{where}: {self.details}"


@attrs.frozen(kw_only=True)
class CheckFailure:
    """A check that could not run to its end (a host did not answer...): its part of the cloud
    was not checked, which a clean report must not hide."""

    check: str
    error: ErrorCode
    plugin: str = ""


@attrs.define(kw_only=True)
class ConsistencyReport:
    """What :func:`check` found. ``ok`` only when nothing was found and every check ran."""

    findings: list[Finding] = attrs.field(factory=list)
    failures: list[CheckFailure] = attrs.field(factory=list)
    checks: list[str] = attrs.field(factory=list)
    hosts_checked: list[str] = attrs.field(factory=list)
    hosts_skipped: list[str] = attrs.field(factory=list)
    """Hosts that were not Connected (or belong to another management node): not compared."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings and not self.failures

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def summary(self) -> str:
        if self.ok:
            return (f"consistent: {len(self.checks)} checks, {len(self.hosts_checked)} hosts compared "
                    f"in {self.seconds:.2f}s")
        parts = [f"{n} {kind}" for kind, n in sorted(self.by_kind().items())]
        if self.failures:
            parts.append(f"{len(self.failures)} checks failed to run")
        return "NOT consistent: " + ", ".join(parts)


class CheckContext:
    """What a check may use: the node's query engine and database, and the hosts.

    Hosts are reached through ``HostRunMsg`` only (the hypervisor connection belongs to the
    compute service); :meth:`on_host` runs ``fn(connection)`` in that host's worker thread.
    """

    def __init__(self, node: ManagementNode) -> None:
        self.node = node
        self._hosts: list[Any] | None = None

    async def find(self, resource: str, conditions: Sequence[Any] = ()) -> list[Any]:
        """Inventories of a queryable resource (``[]`` when no plugin serves it)."""
        if resource not in self.node.query.resources:
            return []
        return await self.node.query.find(resource, list(conditions))

    async def hosts(self) -> list[Any]:
        """Every host (``HostInventory``), as the database has them."""
        if self._hosts is None:
            self._hosts = await self.find("Host")
        return self._hosts

    async def reachable_hosts(self) -> list[Any]:
        """The hosts a check can compare: Connected and managed by this node."""
        owns = self.node.cluster.owns
        return [h for h in await self.hosts() if h.status == "Connected" and owns(h.uuid)]

    async def on_host(self, host_uuid: str, fn: Callable[[Any], Any], timeout: float | None = None) -> Any:
        """``fn(connection)`` on the host, through the compute service's ``HostRunMsg``."""
        from .header.messages import HostRunMsg

        reply = await self.node.bus.call_ok(HostRunMsg(host_uuid=host_uuid, fn=fn, timeout=timeout))
        return reply.result

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a database thread (a check reading its own plugin's tables)."""
        return await self.node.db.run(fn, *args)

    def busy(self, signature: str) -> bool:
        """True when work runs or waits on the task queue ``signature`` (``vm-<uuid>``): what a
        check sees of that resource may be half-way through a change."""
        return bool(self.node.tasks.running(signature) or self.node.tasks.pending(signature))


class ConsistencyCheck(abc.ABC):
    """A check a plugin contributes through ``zstack_consistency_checks``.

    Subclasses set ``name`` (``kvm.domains``) and implement :meth:`run`, yielding
    :class:`Finding` objects (``plugin`` is filled in by the checker). Raise ``ZStackError``
    when the check cannot run; the report lists it as a failure. A check only reads.
    """

    name: str = ""
    description: str = ""

    @abc.abstractmethod
    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        raise NotImplementedError

    def finding(self, kind: str, resource_type: str, resource_uuid: str | None, details: str,
                host_uuid: str | None = None) -> Finding:
        return Finding(check=self.name, kind=kind, resource_type=resource_type, resource_uuid=resource_uuid,
                       host_uuid=host_uuid, details=details)


# -- the kernel's own checks ------------------------------------------------------------------


class OwnershipCheck(ConsistencyCheck):
    """Every ownership record and system tag belongs to a resource that exists (a resource
    removed without ``disown_sync``/``forget`` leaves them behind)."""

    name = "core.ownership"
    description = "ownership records and system tags of resources that no longer exist"

    async def run(self, ctx: CheckContext) -> Iterable[Finding]:
        from .ownership import AccountResourceRefVO
        from .tags import SystemTagVO

        models = dict(ctx.node.resource_models)

        def scan() -> list[tuple[str, str, str, str]]:
            out: list[tuple[str, str, str, str]] = []
            for table, rows in (("ownership", AccountResourceRefVO.select(AccountResourceRefVO.resource_uuid,
                                                                          AccountResourceRefVO.resource_type)),
                                ("system tag", SystemTagVO.select(SystemTagVO.resource_uuid,
                                                                  SystemTagVO.resource_type))):
                by_type: dict[str, set[str]] = {}
                for row in rows:
                    by_type.setdefault(row.resource_type, set()).add(row.resource_uuid)
                for rtype, uuids in by_type.items():
                    model = models.get(rtype)
                    if model is None:
                        continue  # a type this node has no plugin for: nothing to compare with
                    present: set[str] = set()
                    listed = sorted(uuids)
                    for i in range(0, len(listed), 500):
                        chunk = listed[i:i + 500]
                        present |= {u for (u,) in model.select(model.uuid).where(model.uuid.in_(chunk)).tuples()}
                    out += [(table, rtype, u, "") for u in listed if u not in present]
            return out

        return [self.finding(f"orphan-{table.replace(' ', '-')}", rtype, uuid,
                             f"a {table} record of {rtype} {uuid}, which no longer exists")
                for table, rtype, uuid, _ in await ctx.db(scan)]


# -- running the checks -----------------------------------------------------------------------


def registered_checks(node: ManagementNode) -> list[tuple[str, ConsistencyCheck]]:
    """(plugin, check) of every check the loaded plugins contribute, the kernel's first."""
    out: list[tuple[str, ConsistencyCheck]] = [("zstack_core", OwnershipCheck())]
    out += list(node.extensions.get("consistency_checks", []))
    return out


async def _run_once(node: ManagementNode, only: set[str] | None) -> ConsistencyReport:
    ctx = CheckContext(node)
    report = ConsistencyReport()
    started = time.monotonic()
    chosen = [(p, c) for p, c in registered_checks(node) if only is None or c.name in only]

    async def one(plugin: str, chk: ConsistencyCheck) -> None:
        report.checks.append(chk.name)
        try:
            found = list(await chk.run(ctx))
        except ZStackError as exc:
            report.failures.append(CheckFailure(check=chk.name, error=exc.error, plugin=plugin))
            return
        except Exception as exc:  # a bug in the check: say so, keep checking the rest
            log.exception("consistency check %s of plugin %s raised", chk.name, plugin)
            report.failures.append(CheckFailure(check=chk.name, plugin=plugin, error=SysErrors.error(
                "1010", f"consistency check {chk.name} of plugin {plugin!r} raised {type(exc).__name__}: {exc}",
                plugin=plugin)))
            return
        report.findings += [attrs.evolve(f, plugin=plugin) for f in found]

    await asyncio.gather(*(one(p, c) for p, c in chosen))
    hosts = await ctx.hosts()
    reachable = {h.uuid for h in await ctx.reachable_hosts()}
    report.hosts_checked = sorted(reachable)
    report.hosts_skipped = sorted(h.uuid for h in hosts if h.uuid not in reachable)
    report.findings.sort(key=lambda f: (f.check, f.kind, f.resource_uuid or "", f.host_uuid or ""))
    report.checks.sort()
    report.seconds = time.monotonic() - started
    return report


async def check(node: ManagementNode, *, checks: Iterable[str] | None = None, confirm: bool = False,
                confirm_delay: float = 1.0) -> ConsistencyReport:
    """Run every consistency check (or those named in ``checks``) and return the report.

    ``confirm``: run again after ``confirm_delay`` seconds and keep only findings both passes
    saw, so work that was in flight during the first pass is not reported.
    """
    node.check_running()
    only = set(checks) if checks is not None else None
    if only is not None:
        known = {c.name for _, c in registered_checks(node)}
        unknown = sorted(only - known)
        if unknown:
            raise SysErrors.exc("1007", f"no consistency check named {', '.join(unknown)}; known: "
                                        f"{', '.join(sorted(known))}", field="checks")
    first = await _run_once(node, only)
    if not confirm or first.ok:
        return first
    await asyncio.sleep(confirm_delay)
    second = await _run_once(node, only)
    seen = {f.key() for f in first.findings}
    second.findings = [f for f in second.findings if f.key() in seen]
    second.seconds += first.seconds
    return second


# -- the API (admin only) ---------------------------------------------------------------------


@attrs.define(kw_only=True)
class APICheckConsistencyMsg(APIMessage):
    """Compare the database with every connected host and with its own bookkeeping; report
    orphan domains, volumes, IPs and capacity reservations. Changes nothing."""

    SERVICE_ID = "consistency"
    checks: list[str] | None = None
    confirm: bool = False


@attrs.define(kw_only=True)
class APICheckConsistencyReply(APIReply):
    ok: bool = True
    summary: str = ""
    findings: list[Finding] = attrs.field(factory=list)
    failures: list[CheckFailure] = attrs.field(factory=list)
    checks: list[str] = attrs.field(factory=list)
    hosts_checked: list[str] = attrs.field(factory=list)
    hosts_skipped: list[str] = attrs.field(factory=list)
    seconds: float = 0.0


def reply_of(report: ConsistencyReport) -> APICheckConsistencyReply:
    return APICheckConsistencyReply(ok=report.ok, summary=report.summary(), findings=report.findings,
                                    failures=report.failures, checks=report.checks,
                                    hosts_checked=report.hosts_checked, hosts_skipped=report.hosts_skipped,
                                    seconds=round(report.seconds, 3))


class ConsistencyService(Service):
    id = "consistency"
    start_order = 4

    @handles(APICheckConsistencyMsg)
    async def check(self, msg: APICheckConsistencyMsg) -> APICheckConsistencyReply:
        return reply_of(await check(self.node, checks=msg.checks, confirm=msg.confirm))


def api_registrations() -> list[ApiRegistration]:
    """``CheckConsistency``, registered by the kernel's own plugin (:mod:`zstack_core.builtin`)."""
    return [ApiRegistration(message=APICheckConsistencyMsg, route=("GET", "/v1/consistency-report"),
                            admin_only=True)]


# -- ``zstack check`` -------------------------------------------------------------------------


def print_report(data: dict[str, Any], out: Any = None) -> None:
    """A report (as the API answers it) for people: one line per finding, then the summary."""
    import sys

    out = out or sys.stdout
    for f in data.get("findings", []):
        where = f" on host {f['hostUuid']}" if f.get("hostUuid") else ""
        what = f"{f['resourceType']} {f['resourceUuid']}" if f.get("resourceUuid") else f["resourceType"]
        print(f"{f['kind']:<24} {what}{where}: {f['details']}  [{f['check']}]", file=out)
    for failure in data.get("failures", []):
        err_ = failure["error"]
        print(f"{'check-failed':<24} {failure['check']}: {err_['code']} {err_.get('details', '')}", file=out)
    skipped = data.get("hostsSkipped") or []
    if skipped:
        print(f"not compared (not Connected or another node's): {', '.join(skipped)}", file=out)
    print(data.get("summary", ""), file=out)


async def _offline(args: Any) -> dict[str, Any]:
    """Start a node from the configuration (no HTTP), wait for its hosts, check, stop."""
    from .cli import _node_kwargs
    from .node import ManagementNode
    from .serialize import unstructure

    node = ManagementNode(**_node_kwargs(args))
    await node.start()
    try:
        # Hosts reconnect in the background once the node started: wait until none is
        # Connecting and no work runs on any (``host-<uuid>``), twice in a row.
        deadline, settled = time.monotonic() + args.wait, 0
        while time.monotonic() < deadline and settled < 2:
            await asyncio.sleep(0.2)
            ctx = CheckContext(node)
            hosts = await ctx.hosts()
            quiet = not any(h.status == "Connecting" or ctx.busy(f"host-{h.uuid}") for h in hosts)
            settled = settled + 1 if quiet else 0
        report = await check(node, checks=args.check, confirm=args.confirm)
        return unstructure(reply_of(report))  # type: ignore[no-any-return]
    finally:
        await node.stop()


def cmd_check(args: Any) -> int:
    """``zstack check``: 0 consistent, 1 findings (or checks that could not run), 2 the node
    could not start, 3 the node could not be reached."""
    import json
    import sys

    from .node import NodeStartError

    if args.offline:
        try:
            data = asyncio.run(_offline(args))
        except NodeStartError as exc:
            print(f"zstack: {exc}", file=sys.stderr)
            return 2
        except ZStackError as exc:
            print(f"zstack: {exc.error}", file=sys.stderr)
            return 1
    else:
        from .cli_client import _client, _run

        result: dict[str, Any] = {}

        def call() -> int:
            params: dict[str, Any] = {"confirm": args.confirm}
            if args.check:
                params["checks"] = args.check
            result.update(_client(args).call("CheckConsistency", **params))
            return 0

        status = _run(call)
        if status:
            return status
        data = result
    data.pop("error", None)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_report(data)
    return 0 if data.get("ok") else 1


def add_check_command(sub: Any) -> None:
    """Add ``zstack check`` to the ``zstack`` parser's subcommands."""
    p = sub.add_parser("check", help="compare the database with every host: orphan domains, volumes, IPs, capacity",
                       description="Compare the database with libvirt on every connected host and with its own "
                                   "bookkeeping. Asks the running node (CheckConsistency, admin session from "
                                   "`zstack login`), or with --offline starts the node from its configuration "
                                   "(which runs its start-up recovery), checks and stops it. Exit status 1 when "
                                   "anything is found.")
    p.add_argument("--url", help="the running node's HTTP API (default: $ZSTACK_URL, the logged-in node)")
    p.add_argument("--offline", action="store_true", help="no node is running: start one in this process to check")
    p.add_argument("--wait", type=float, default=60.0, help="--offline: seconds to wait for hosts to connect")
    p.add_argument("--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    p.add_argument("--confirm", action="store_true", help="check twice, report only what both passes found")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)
