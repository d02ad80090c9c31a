"""Several management nodes on one database (ZStack's ``ManagementNodeManager`` and the remote
half of its ``CloudBus``).

Every node keeps a row in ``management_node`` and beats it every
``managementServer/node.heartbeatInterval`` seconds. Each node watches the others' beat counters
on its own clock; one whose counter has not moved for ``interval × node.heartbeatMissedLimit``
is dead: the first survivor to notice deletes its row, and every survivor fails its running
jobs, drops it from the ring and calls ``zstack_node_left``. A new row calls
``zstack_node_join`` (this node's own uuid too, when it starts serving HTTP and so can receive
work).

The ring (:class:`~zstack_core.cluster.ring.HashRing`) of the nodes serving HTTP decides the
owner of every resource. ``CloudBus.call(msg, resource_uuid=...)`` asks :meth:`Cluster.route`,
which hands the message to the owner over HTTP when that is another node. Events published here
are posted to every peer; global config changes reach peers at once (a nudge) and, should the
nudge be lost, at the next heartbeat (every node re-reads the config tables as it beats).

A node that never serves HTTP (an embedded node, a script) is in nobody's ring: it owns nothing
and forwards work about resources to the owners; alone on its database it handles everything.
SQLite is one process by design: rows of other nodes in it are left-overs, removed at start, and
a node on SQLite does not beat (nobody could hear it).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import secrets
import socket
import time
import uuid as uuidlib
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..db import utcnow
from ..errors import SysErrors, ZStackError, err, invalid_argument
from ..messages import Event, MessageReply, NeedReplyMessage
from . import wire
from .errors import ClusterErrors
from .models import ClusterSecretVO, ManagementNodeVO
from .ring import HashRing
from .transport import HttpPeerClient, PeerLost, PeerUnreachable

if TYPE_CHECKING:
    from ..jobs import DatabaseJobStore
    from ..node import ManagementNode

__all__ = ["CATEGORY", "Cluster", "Peer", "handled_by"]

log = logging.getLogger("zstack.cluster")

CATEGORY = "managementServer"
MESSAGES_PATH = "/v1/cluster/messages"
EVENTS_PATH = "/v1/cluster/events"
CONFIGS_PATH = "/v1/cluster/configs"
PING_PATH = "/v1/cluster/ping"
MEMBERSHIP_PATH = "/v1/cluster/membership"

handled_by: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("zstack_handled_by", default=None)
"""Set by the HTTP layer for each API request; a forward appends the node that handled it, which
the response names in ``X-ZStack-Node``."""

_from_peer: contextvars.ContextVar[bool] = contextvars.ContextVar("zstack_config_from_peer", default=False)

_JOB_STOPPED = "the management node running this job stopped"


class Peer:
    """Another node, as this one sees it."""

    __slots__ = ("uuid", "host", "port", "beats", "changed_at", "suspect")

    def __init__(self, uuid: str, beats: int, now: float) -> None:
        self.uuid = uuid
        self.host: str | None = None
        self.port: int | None = None
        self.beats = beats
        self.changed_at = now
        self.suspect = False
        """A request to it failed to connect: out of the ring until it answers a ping."""

    @property
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"Peer({self.uuid}, {self.url}, beats={self.beats}{', suspect' if self.suspect else ''})"


class Cluster:
    """This node's membership in the cluster; ``node.cluster``."""

    def __init__(self, node: ManagementNode) -> None:
        self.node = node
        self.uuid = ""
        self.host: str | None = None
        self.port: int | None = None
        self.peers: dict[str, Peer] = {}
        self.ring = HashRing()
        self.client = HttpPeerClient()
        self.jobs: DatabaseJobStore | None = None
        self._secret = b""
        self._registered = False
        self._loop_task: asyncio.Task[None] | None = None
        self._hook_queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._hook_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_beat = 0.0
        self._outbox: dict[str, list[Event]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._accepted: dict[str, type[NeedReplyMessage]] | None = None

    # -- identity and settings -------------------------------------------------------------

    def identify(self) -> str:
        """This node's UUID: ``cluster.node_uuid``, else the one kept in ``<data_dir>/node-uuid``
        (made at first start), so a restarted node is the same member and takes back the
        resources it owned."""
        configured = self.node.properties["cluster.node_uuid"]
        if configured:
            if len(configured) != 32 or any(c not in "0123456789abcdef" for c in configured):
                raise invalid_argument(f"cluster.node_uuid must be 32 lower-case hex digits, got {configured!r}",
                                       "cluster.node_uuid")
            self.uuid = configured
            return self.uuid
        path = self.node.data_dir / "node-uuid"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
            self.uuid = text
        else:
            self.uuid = uuidlib.uuid4().hex
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(self.uuid + "\n")
            tmp.replace(path)
        return self.uuid

    @property
    def interval(self) -> float:
        return float(self.node.configs.get(CATEGORY, "node.heartbeatInterval"))

    @property
    def missed_limit(self) -> int:
        return int(self.node.configs.get(CATEGORY, "node.heartbeatMissedLimit"))

    @property
    def detection_time(self) -> float:
        """Seconds without a beat after which a peer is dead."""
        return self.interval * self.missed_limit

    # -- ownership --------------------------------------------------------------------------

    def owner_of(self, resource_uuid: str) -> str:
        """The node that handles work about ``resource_uuid``: the ring's answer, or this node
        when no node serves HTTP (alone, or nobody can receive forwarded work)."""
        return self.ring.owner_of(resource_uuid) or self.uuid

    def owns(self, resource_uuid: str) -> bool:
        """True when this node handles work about ``resource_uuid`` (hosts it pings, VMs it
        syncs...)."""
        return self.owner_of(resource_uuid) == self.uuid

    @property
    def members(self) -> frozenset[str]:
        """Nodes in the ring (those that can receive forwarded work)."""
        return self.ring.nodes

    # -- start and stop ---------------------------------------------------------------------

    async def start(self, jobs: DatabaseJobStore) -> None:
        """Join the database's cluster: agree on the secret, fail jobs nobody will finish,
        write this node's row. Called once the database is open, before services start."""
        self.jobs = jobs
        self._secret = await self.node.db.run(self._agree_secret_sync, self.node.properties["cluster.secret"])
        sqlite = self.node.db.is_sqlite
        rows = await self.node.db.atomic(self._register_sync, sqlite)
        alive = [r.uuid for r in rows if r.uuid != self.uuid]
        # Jobs of this node's previous life, of nodes already removed, and of no node at all.
        stopped = SysErrors.error("1006", _JOB_STOPPED)
        await jobs.fail_running(stopped, alive=alive)
        now = time.monotonic()
        for row in rows:
            if row.uuid != self.uuid:
                self._observe(row, now)
        self._last_beat = now
        self._rebuild_ring(fire=False)
        self.node.bus.router = self

    def _agree_secret_sync(self, configured: str) -> bytes:
        fingerprint = hmac.new(configured.encode(), b"zstack-cluster-secret", hashlib.sha256).hexdigest()
        if configured:
            ClusterSecretVO.insert(id=1, secret=None, fingerprint=fingerprint).on_conflict_ignore().execute()
        else:
            generated = secrets.token_hex(32)
            ClusterSecretVO.insert(
                id=1, secret=generated,
                fingerprint=hmac.new(generated.encode(), b"zstack-cluster-secret", hashlib.sha256).hexdigest(),
            ).on_conflict_ignore().execute()
        row = ClusterSecretVO.get(ClusterSecretVO.id == 1)
        if configured:
            if not hmac.compare_digest(row.fingerprint, fingerprint):
                raise ClusterErrors.exc("1002", "cluster.secret differs from the secret the other management nodes "
                                                "of this database use: give every node the same cluster.secret")
            return configured.encode()
        if row.secret is None:
            raise ClusterErrors.exc("1002", "the management nodes of this database use a configured cluster.secret: "
                                            "set the same cluster.secret on this node")
        return str(row.secret).encode()

    def _register_sync(self, sqlite: bool) -> list[ManagementNodeVO]:
        if sqlite:  # one process: any other row is a left-over of an earlier run
            ManagementNodeVO.delete().where(ManagementNodeVO.uuid != self.uuid).execute()
        now = utcnow()
        ManagementNodeVO.delete().where(ManagementNodeVO.uuid == self.uuid).execute()
        ManagementNodeVO.insert(uuid=self.uuid, host_name=self.host, port=self.port,
                                state="Running" if self.port else "Joining", heartbeat=now, beats=0,
                                joined_at=now, created_at=now, updated_at=now).execute()
        self._registered = True
        return list(ManagementNodeVO.select())

    async def ready(self) -> None:
        """Start beating (once services run, so join/left hooks find them ready). Not on SQLite:
        one process is the only node there, with nobody to beat for."""
        if self._loop_task is None and not self.node.db.is_sqlite:
            loop = asyncio.get_running_loop()
            self._loop_task = loop.create_task(self._beat_loop(), name="zstack-heartbeat")
            self._hook_task = loop.create_task(self._hook_loop(), name="zstack-node-changes")

    async def advertise(self, host: str, port: int) -> None:
        """This node serves HTTP at ``host``:``port``: enter the ring and receive work."""
        wanted = self.node.properties["cluster.advertise_host"] or host
        if wanted in ("", "0.0.0.0", "::"):
            wanted = socket.gethostbyname(socket.gethostname())
        self.host, self.port = wanted, port

        def write() -> None:
            ManagementNodeVO.update(host_name=self.host, port=self.port, state="Running",
                                    updated_at=utcnow()).where(ManagementNodeVO.uuid == self.uuid).execute()

        await self.node.db.run(write)
        log.info("management node %s serves node-to-node requests at http://%s:%s", self.uuid, self.host, self.port)
        self._rebuild_ring()

    async def leave(self) -> None:
        """Leave the cluster before stopping: peers re-hash at their next beat instead of waiting
        for this node to be found dead."""
        self.node.bus.router = None
        for task in (self._loop_task, self._hook_task, *self._senders.values(), *self._background):
            if task is not None:
                task.cancel()
        tasks = [t for t in (self._loop_task, self._hook_task, *self._senders.values(), *self._background) if t]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = self._hook_task = None
        self._senders.clear()
        self._background.clear()
        if self._registered and self.node.db is not None:
            self._registered = False
            try:
                await self.node.db.run(
                    lambda: ManagementNodeVO.delete().where(ManagementNodeVO.uuid == self.uuid).execute())
            except ZStackError as exc:
                log.warning("could not remove this node's row from management_node: %s", exc.error)
            else:  # peers that hear it drop us now rather than at their next beat
                body = wire.dumps({"from": self.uuid})
                nudges = [self._nudge(p, MEMBERSHIP_PATH, body) for p in self.peers.values()
                          if p.host is not None and p.port is not None and not p.suspect]
                if nudges:
                    _, pending = await asyncio.wait([asyncio.ensure_future(n) for n in nudges], timeout=2.0)
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
        self.client.close()

    # -- heartbeat --------------------------------------------------------------------------

    async def _beat_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except ZStackError as exc:
                log.warning("heartbeat failed: %s", exc.error)
            except Exception:
                log.exception("heartbeat failed")

    @property
    def beating(self) -> bool:
        """True while this node heartbeats (started, not on SQLite, not left)."""
        return self._loop_task is not None and not self._loop_task.done()

    def wake(self) -> None:
        """Beat now rather than at the end of the interval (the interval changed...)."""
        self._wake.set()

    async def beat(self) -> None:
        """One heartbeat: write ours, read everyone's, settle who is alive, re-read configs."""
        rows = await self.node.db.run(self._beat_sync)
        now = time.monotonic()
        if now - self._last_beat > 2 * self.interval:
            # We could not observe for a while (database down, loop blocked): nobody's silence
            # in that time counts against them.
            for peer in self.peers.values():
                peer.changed_at = now
        self._last_beat = now
        present = set()
        dead: list[Peer] = []
        for row in rows:
            if row.uuid == self.uuid:
                continue
            present.add(row.uuid)
            peer = self._observe(row, now)
            if now - peer.changed_at > self.detection_time:
                dead.append(peer)
        gone = [p for uuid, p in self.peers.items() if uuid not in present]
        for peer in [*dead, *gone]:  # out of the ring at once: no more work is sent there
            self.peers.pop(peer.uuid, None)
            if peer.host is not None and peer.port is not None:
                self.client.abort(peer.host, peer.port)
        self._rebuild_ring()
        for peer in dead:
            log.warning("management node %s (%s) missed its heartbeats for %.1fs: it is dead",
                        peer.uuid, peer.url, now - peer.changed_at)
            # Only the row as we saw it: a node that beat meanwhile is not dead.
            await self.node.db.run(lambda p=peer: ManagementNodeVO.delete().where(
                (ManagementNodeVO.uuid == p.uuid) & (ManagementNodeVO.beats == p.beats)).execute())
        if dead:
            self._tell_peers(MEMBERSHIP_PATH)  # they beat now instead of up to an interval later
        for peer in [*dead, *gone]:
            await self._fail_jobs_of(peer.uuid)
        await self._probe_suspects()
        self._rebuild_ring()
        token = _from_peer.set(True)
        try:
            await self.node.configs.refresh()
        finally:
            _from_peer.reset(token)

    def _beat_sync(self) -> list[ManagementNodeVO]:
        now = utcnow()
        updated = ManagementNodeVO.update(heartbeat=now, beats=ManagementNodeVO.beats + 1).where(
            ManagementNodeVO.uuid == self.uuid).execute()
        if not updated:
            # Others found us dead (we were silent too long) and removed our row: rejoin.
            log.warning("this node's row was removed by another node (missed heartbeats?); rejoining")
            ManagementNodeVO.insert(uuid=self.uuid, host_name=self.host, port=self.port,
                                    state="Running" if self.port else "Joining", heartbeat=now, beats=0,
                                    joined_at=now, created_at=now, updated_at=now).on_conflict_ignore().execute()
        return list(ManagementNodeVO.select())

    def _observe(self, row: ManagementNodeVO, now: float) -> Peer:
        peer = self.peers.get(row.uuid)
        if peer is None:
            peer = self.peers[row.uuid] = Peer(row.uuid, row.beats, now)
        elif row.beats != peer.beats:
            peer.beats, peer.changed_at = row.beats, now
        # Only a node serving HTTP can receive work; one restarting (Joining again) cannot yet.
        address = (row.host_name, row.port) if row.state == "Running" else (None, None)
        if address != (peer.host, peer.port):
            if peer.host is not None and peer.port is not None:
                self.client.abort(peer.host, peer.port)
            peer.host, peer.port = address
        return peer

    async def _probe_suspects(self) -> None:
        async def probe(peer: Peer) -> None:
            if await self.ping(peer):
                log.info("management node %s answers again", peer.uuid)
                peer.suspect = False

        suspects = [p for p in self.peers.values() if p.suspect]
        if suspects:
            await asyncio.gather(*(probe(p) for p in suspects))

    async def _fail_jobs_of(self, node_uuid: str) -> None:
        if self.jobs is None:
            return
        cause = ClusterErrors.error("1005", f"management node {node_uuid} stopped heart-beating")
        n = await self.jobs.fail_running(SysErrors.error("1006", _JOB_STOPPED, cause=cause), node_uuid)
        if n:
            log.warning("%d API jobs of management node %s ended Failed", n, node_uuid)

    # -- the ring and the hooks -------------------------------------------------------------

    def _rebuild_ring(self, fire: bool = True) -> None:
        members = {p.uuid for p in self.peers.values() if p.url is not None and not p.suspect}
        if self.port is not None:
            members.add(self.uuid)
        if members == self.ring.nodes:
            return
        old, self.ring = self.ring, HashRing(members)
        log.info("ring: %s", ", ".join(sorted(members)) or "(empty)")
        if fire:
            for uuid in sorted(members - old.nodes):
                self._hook_queue.put_nowait(("join", uuid))
            for uuid in sorted(old.nodes - members):
                self._hook_queue.put_nowait(("left", uuid))

    async def _hook_loop(self) -> None:
        # In their own task, in order: a slow listener (reconnecting inherited hosts) must never
        # delay our heartbeat, or we would look dead ourselves.
        while True:
            kind, uuid = await self._hook_queue.get()
            try:
                if kind == "join":
                    await self.node.hooks.node_join(uuid)
                else:
                    await self.node.hooks.node_left(uuid)
            except Exception:
                log.exception("zstack_node_%s(%s) failed", kind, uuid)

    def _suspect(self, peer: Peer) -> None:
        if not peer.suspect:
            peer.suspect = True
            log.warning("management node %s (%s) is unreachable: out of the ring until it answers",
                        peer.uuid, peer.url)
            self._rebuild_ring()

    # -- sending ----------------------------------------------------------------------------

    def _headers(self, body: bytes) -> dict[str, str]:
        return {wire.SIGNATURE_HEADER: wire.sign(self._secret, body), wire.NODE_HEADER: self.uuid}

    def route(self, msg: NeedReplyMessage, service_id: str, resource_uuid: str,
              timeout: float | None) -> Awaitable[MessageReply] | None:
        """The bus's router: None when this node owns ``resource_uuid``, else the forward."""
        owner = self.ring.owner_of(resource_uuid)
        if owner is None or owner == self.uuid:
            return None
        return self.forward(owner, msg, service_id, timeout, resource_uuid)

    async def forward(self, owner: str, msg: NeedReplyMessage, service_id: str, timeout: float | None,
                      resource_uuid: str | None = None) -> MessageReply:
        """Have node ``owner`` handle ``msg`` and return its reply (errors in the reply)."""
        peer = self.peers.get(owner)
        if peer is None or peer.host is None or peer.port is None:
            return MessageReply(error=ClusterErrors.error("1000", f"management node {owner} is not known here"))
        limit = timeout if timeout is not None else (msg.timeout if msg.timeout is not None else self.node.bus.default_timeout)
        try:
            body = wire.encode_message(msg, service_id, limit, self.uuid)
        except ZStackError as exc:
            return MessageReply(error=exc.error)
        about = f" (owner of {resource_uuid})" if resource_uuid else ""
        try:
            status, headers, data = await self.client.post(peer.host, peer.port, MESSAGES_PATH, body,
                                                           self._headers(body), limit + 5.0)
        except PeerUnreachable as exc:
            self._suspect(peer)
            return MessageReply(error=ClusterErrors.error(
                "1000", f"management node {owner}{about} at {peer.url} is unreachable: {exc}; "
                        f"{type(msg).__name__} was not delivered; its resources move to the other nodes"))
        except PeerLost as exc:
            if owner not in self.peers:
                return MessageReply(error=ClusterErrors.error(
                    "1005", f"management node {owner}{about} died while handling {type(msg).__name__}"))
            self._suspect(peer)
            return MessageReply(error=ClusterErrors.error(
                "1001", f"lost management node {owner}{about} while it handled {type(msg).__name__} "
                        f"(whether it was done is unknown): {exc}"))
        except TimeoutError:
            return MessageReply(error=err("1001", f"{type(msg).__name__} got no reply from management node "
                                                  f"{owner}{about} in {limit:g}s"))
        if status != 200:
            return MessageReply(error=wire.error_of(data, status))
        if not wire.verify(self._secret, data, headers.get(wire.SIGNATURE_HEADER.lower())):
            return MessageReply(error=ClusterErrors.error("1002", f"the answer of management node {owner} is not "
                                                                  "signed with the cluster secret"))
        try:
            reply = wire.decode_reply(data)
        except ZStackError as exc:
            return MessageReply(error=exc.error)
        box = handled_by.get()
        if box is not None:
            box.append(owner)
        return reply

    async def ping(self, peer: Peer, timeout: float = 2.0) -> bool:
        """True when ``peer`` answers a signed ping."""
        if peer.host is None or peer.port is None:
            return False
        body = wire.dumps({"from": self.uuid})
        try:
            status, _, _ = await self.client.post(peer.host, peer.port, PING_PATH, body, self._headers(body), timeout)
        except (ConnectionError, TimeoutError):
            return False
        return status == 200

    def publish(self, event: Event) -> None:
        """The bus's router: post ``event`` to every peer (batched, in order, per peer)."""
        for peer in self.peers.values():
            if peer.url is None or peer.suspect:
                continue
            box = self._outbox.get(peer.uuid)
            if box is None:
                box = self._outbox[peer.uuid] = []
            box.append(event)
            if peer.uuid not in self._senders:
                task = asyncio.get_running_loop().create_task(self._send_events(peer))
                self._senders[peer.uuid] = task

    async def _send_events(self, peer: Peer) -> None:
        try:
            while self._outbox.get(peer.uuid):
                batch, self._outbox[peer.uuid] = self._outbox[peer.uuid][:500], self._outbox[peer.uuid][500:]
                try:
                    body = wire.encode_event_batch(batch, self.uuid)
                except (TypeError, ValueError) as exc:
                    body = wire.encode_event_batch(self._serializable(batch, exc), self.uuid)
                if peer.host is None or peer.port is None or peer.uuid not in self.peers:
                    break
                try:
                    status, _, data = await self.client.post(peer.host, peer.port, EVENTS_PATH, body,
                                                             self._headers(body), 10.0)
                except (ConnectionError, TimeoutError) as exc:
                    log.warning("%d events not delivered to management node %s: %s", len(batch), peer.uuid, exc)
                    continue
                if status != 200:
                    log.warning("management node %s refused %d events: %s", peer.uuid, len(batch),
                                wire.error_of(data, status))
        finally:
            self._senders.pop(peer.uuid, None)
            self._outbox.pop(peer.uuid, None)

    @staticmethod
    def _serializable(batch: list[Event], exc: Exception) -> list[Event]:
        out = []
        for event in batch:
            try:
                wire.encode_event_batch([event], "")
            except (TypeError, ValueError) as one:
                log.warning("%s cannot be sent to other management nodes: %s", type(event).__name__, one)
            else:
                out.append(event)
        return out

    def config_changed(self) -> None:
        """A global config changed here: tell peers to re-read configs now."""
        if _from_peer.get():
            return  # applied from the database because a peer changed it; the peer tells others
        self._tell_peers(CONFIGS_PATH)

    def _tell_peers(self, path: str) -> None:
        """Nudge every peer (``CONFIGS_PATH``: re-read configs; ``MEMBERSHIP_PATH``: beat now).
        Best effort: what a lost nudge would have said, the peer learns at its next beat."""
        body = wire.dumps({"from": self.uuid})
        for peer in list(self.peers.values()):
            if peer.host is not None and peer.port is not None and not peer.suspect:
                self._spawn(self._nudge(peer, path, body))

    async def _nudge(self, peer: Peer, path: str, body: bytes) -> None:
        assert peer.host is not None and peer.port is not None
        try:
            await self.client.post(peer.host, peer.port, path, body, self._headers(body), 5.0)
        except (ConnectionError, TimeoutError) as exc:
            log.info("management node %s not nudged at %s (it catches up at its next beat): %s", peer.uuid, path, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- receiving --------------------------------------------------------------------------

    def verify(self, body: bytes, signature: str | None) -> bool:
        return bool(self._secret) and wire.verify(self._secret, body, signature)

    def sign(self, body: bytes) -> str:
        return wire.sign(self._secret, body)

    def accepted_messages(self) -> dict[str, type[NeedReplyMessage]]:
        """Message classes a peer may send here: registered APIs and the types local services
        handle (attrs classes that need a reply)."""
        if self._accepted is None:
            import attrs

            classes: set[type] = {reg.message for reg in self.node.api.registrations.values()}
            classes |= self.node.bus.message_types()
            self._accepted = {wire.class_path(c): c for c in classes
                              if attrs.has(c) and issubclass(c, NeedReplyMessage)}
        return self._accepted

    async def receive_message(self, body: bytes) -> bytes:
        """Handle a forwarded message here (never forwarded again) and return the reply body."""
        msg, service_id, timeout = wire.decode_message(body, self.accepted_messages())
        reply = await self.node.bus.call(msg, service_id, timeout)
        return wire.encode_reply(reply, self.uuid)

    def receive_events(self, body: bytes) -> int:
        events = wire.decode_event_batch(body, self.node.bus.has_subscribers)
        for event in events:
            self.node.bus.publish(event, local_only=True)
        return len(events)

    async def receive_config_nudge(self) -> int:
        token = _from_peer.set(True)
        try:
            return await self.node.configs.refresh()
        finally:
            _from_peer.reset(token)
