"""One libvirt connection per host, shared by that host's worker threads.

libvirt calls block, so none runs on the event loop: each host has a :class:`LibvirtHost` that
owns the host's one ``virConnect`` and a :class:`HostWorker`, a pool of daemon threads
(``kvm/host.libvirtWorkers``) that share it (libvirt connections are thread-safe), so calls
on one host run side by side like those of a threaded libvirt-python program; the order of the
operations on one VM is kept above, by the node's task queues. Everything that talks to the
host (compute itself, and storage and network through ``HostRunMsg``) goes through
:meth:`LibvirtHost.run`. One connection per host matters for ``test:///path/driver.xml`` URIs:
every open of such a URI creates a *private* driver instance, so a second connection would see
a different "host". Pings run in a thread of their own (:class:`Pinger`), never behind slow calls.

libvirt's event loop runs in one daemon thread per process (``virEventRegisterDefaultImpl`` +
``virEventRunDefaultImpl``). Domain lifecycle events and connection-close notices arrive there
and are handed to the node's asyncio loop with ``call_soon_threadsafe``: they are hints that
trigger a reconcile, never the only source of truth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import libvirt  # type: ignore[import-untyped]

from zstack_core import ZStackError

from .errors import HostErrors

__all__ = [
    "Connection",
    "HostUri",
    "HostWorker",
    "Job",
    "LibvirtHost",
    "Pinger",
    "ensure_event_loop",
    "libvirt_error",
    "open_probe",
    "parse_uri",
    "run_job",
]

log = logging.getLogger("zstack.kvm.libvirt")
T = TypeVar("T")

# libvirt prints every error to stderr by default; we report them as ErrorCodes instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_SCHEMES = ("test", "qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix", "qemu+libssh", "qemu+libssh2")


@attrs.frozen(kw_only=True)
class HostUri:
    """A parsed libvirt URI of a KVM host."""

    uri: str
    scheme: str
    hostname: str | None
    path: str

    @property
    def is_test(self) -> bool:
        """libvirt's test driver (``test:///default`` or ``test:///path/driver.xml``)."""
        return self.scheme == "test"

    @property
    def is_local(self) -> bool:
        """The libvirtd of this machine (no host part): commands such as ``qemu-img`` and
        ``nft`` can run here instead of on a remote host."""
        return not self.hostname or self.hostname in ("localhost", "127.0.0.1", "::1")

    @property
    def is_local_qemu(self) -> bool:
        return self.scheme in ("qemu", "qemu+unix") and not self.hostname

    @property
    def address(self) -> str:
        """Where this host's consoles listen from the outside: its hostname, or loopback."""
        return self.hostname or "127.0.0.1"


def parse_uri(uri: str) -> HostUri:
    """Validate a KVM host's libvirt URI or raise ``HOST.1006`` saying what is wrong."""
    if not isinstance(uri, str) or not uri.strip():
        raise HostErrors.exc("1006", "the libvirt URI is empty", field="url")
    if any(c.isspace() for c in uri):
        raise HostErrors.exc("1006", f"{uri!r} contains white space", field="url")
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise HostErrors.exc("1006", f"{uri!r}: scheme {parts.scheme or '(none)'!r} is not one of "
                                     f"{', '.join(_SCHEMES)}", field="url")
    try:
        hostname = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise HostErrors.exc("1006", f"{uri!r}: {exc}", field="url") from None
    path = parts.path
    if scheme == "test":
        if hostname:
            raise HostErrors.exc("1006", f"{uri!r}: a test driver URI has no host part", field="url")
        if path != "/default" and not path.endswith(".xml"):
            raise HostErrors.exc("1006", f"{uri!r}: expected test:///default or test:///path/to/driver.xml",
                                 field="url")
    else:
        if path not in ("/system", "/session"):
            raise HostErrors.exc("1006", f"{uri!r}: a QEMU URI ends in /system or /session", field="url")
        if scheme not in ("qemu", "qemu+unix") and not hostname:
            raise HostErrors.exc("1006", f"{uri!r}: scheme {scheme} needs a host name", field="url")
    return HostUri(uri=uri, scheme=scheme, hostname=hostname, path=path)


def libvirt_error(exc: BaseException, what: str) -> ZStackError:
    """``HOST.1008`` for a failed libvirt call, keeping libvirt's own message and code."""
    if isinstance(exc, ZStackError):
        return exc
    if isinstance(exc, libvirt.libvirtError):
        return HostErrors.exc("1008", f"{what}: {exc.get_error_message() or exc}",
                              libvirt_code=exc.get_error_code())
    return HostErrors.exc("1008", f"{what}: {type(exc).__name__}: {exc}")


# -- the process's libvirt event loop ---------------------------------------------------------

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once per
    process). Must happen before connections are opened, or they get no events or keepalives."""
    global _event_thread
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # an event callback raised: keep the loop alive
                    log.exception("libvirt event loop iteration failed")

        _event_thread = threading.Thread(target=run, name="zstack-libvirt-events", daemon=True)
        _event_thread.start()


# -- per-host worker threads ------------------------------------------------------------------


@attrs.define(eq=False)
class Job:
    """One call submitted to a :class:`HostWorker`."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]
    started: Callable[[], None] | None = None
    """Called in the worker thread as the job starts (to time it from then, not from its queuing)."""
    running: bool = False
    abandoned: bool = False
    """Its caller stopped waiting (a timeout)."""
    replaced: bool = False
    """A new thread took the place of the one running it, which ends when the call returns."""


class HostWorker:
    """Up to ``size`` daemon threads running one host's jobs from one queue.

    libvirt connections are thread-safe (libvirtd itself serves each client from a pool of
    threads), so the threads share the host's one connection: ten VM starts on a host run side
    by side as they would from ten threads of a plain libvirt-python program. Threads start when
    jobs wait and none is idle, and end after :data:`IDLE_SECONDS` without work, so a node with
    many quiet hosts does not keep ``size`` threads for each. Daemon threads (not a
    ``ThreadPoolExecutor``) because a libvirt call can hang on a dead remote host: the caller
    abandons such a job, a new thread takes the stuck one's place, and a stuck thread never
    blocks interpreter exit.
    """

    IDLE_SECONDS = 60.0

    def __init__(self, name: str, size: int = 1) -> None:
        if size < 1:
            raise ValueError(f"a host worker needs at least one thread, not {size}")
        self.name = name
        self.size = size
        """Threads it may run (stuck threads of abandoned jobs not counted)."""
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._stuck = 0
        self._idle = 0
        self._queued = 0
        self._serial = 0
        self.pending = 0
        """Jobs submitted and not yet finished (read from the event loop; written under the lock)."""

    @property
    def threads(self) -> int:
        """Threads alive, including any still stuck in an abandoned call."""
        with self._lock:
            return len(self._threads)

    def resize(self, size: int) -> None:
        """Run up to ``size`` threads from now on; extra ones end as they finish their job."""
        if size < 1:
            raise ValueError(f"a host worker needs at least one thread, not {size}")
        with self._lock:
            self.size = size
            spawn = self._wanted()
        for _ in range(spawn):
            self._spawn()

    def _wanted(self) -> int:
        """New threads needed for the queued jobs (under the lock)."""
        room = self.size - (len(self._threads) - self._stuck)
        return max(0, min(self._queued - self._idle, room))

    def _spawn(self) -> None:
        with self._lock:
            self._serial += 1
            thread = threading.Thread(target=self._loop, name=f"{self.name}-{self._serial}", daemon=True)
            self._threads.add(thread)
        thread.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queued >= self._idle:  # a job is on its way to this thread
                        self._idle -= 1
                        continue
                    self._idle -= 1
                    self._threads.discard(me)
                    return
            with self._lock:
                self._idle -= 1
                if job is None:
                    self._threads.discard(me)
                    return
                self._queued -= 1
                skip = job.abandoned
                job.running = not skip
            try:
                if not skip and job.future.set_running_or_notify_cancel():
                    if job.started is not None:
                        job.started()
                    try:
                        job.future.set_result(job.fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                        job.future.set_exception(exc)
            finally:
                with self._lock:
                    self.pending -= 1
                    if job.replaced:
                        self._stuck -= 1
                    # Replaced while stuck, or more threads than the (lowered) size: end.
                    end = job.replaced or len(self._threads) - self._stuck > self.size
                    if end:
                        self._threads.discard(me)
            if end:
                return

    def submit(self, fn: Callable[[], T], started: Callable[[], None] | None = None) -> Job:
        """Queue ``fn``; its result or exception arrives in the returned job's ``future``."""
        job = Job(fn=fn, future=concurrent.futures.Future(), started=started)
        with self._lock:
            self.pending += 1
            self._queued += 1
            spawn = self._wanted()
        self._jobs.put(job)
        for _ in range(spawn):
            self._spawn()
        return job

    def abandon(self, job: Job) -> None:
        """The caller of ``job`` gave up on it. Queued, it never runs; running (its thread may
        be stuck in libvirt), it no longer counts against ``size``, so a new thread can take
        its place. At most ``4 * size`` stuck threads are replaced (a dead host does not grow
        threads without end; its connection is closed by then anyway)."""
        with self._lock:
            if job.future.done() or job.abandoned:
                return
            job.abandoned = True
            if job.running and self._stuck < 4 * self.size:
                job.replaced = True
                self._stuck += 1
            spawn = self._wanted()
        for _ in range(spawn):
            self._spawn()

    def stop(self) -> None:
        """End every thread once the jobs queued before are done."""
        with self._lock:
            count = len(self._threads)
        for _ in range(count):
            self._jobs.put(None)

    def join(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


async def run_job(worker: HostWorker, fn: Callable[[], T], timeout: float | None, what: str) -> T:
    """``fn`` on ``worker``, awaited; with a ``timeout``, the call may take that long *from when
    a thread starts it* (and may wait as long again for a thread): a call queued behind slow
    ones is not taken for a host that does not answer. Past it: the job is abandoned and
    ``HOST.1005`` raised."""
    if timeout is None:
        return await asyncio.wrap_future(worker.submit(fn).future)  # type: ignore[no-any-return]
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()

    def on_start() -> None:
        _hand_over(loop, lambda: None if started.done() else started.set_result(None))

    job = worker.submit(fn, started=on_start)
    fut = asyncio.wrap_future(job.future)
    try:
        done, _ = await asyncio.wait({started, fut}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        worker.abandon(job)
        fut.cancel()
        raise HostErrors.exc("1005", f"{what} did not answer in {timeout:g}s") from None
    except asyncio.CancelledError:
        fut.cancel()  # not started yet: it never will
        raise
    finally:
        started.cancel()


async def in_thread(fn: Callable[[], T], timeout: float, what: str,
                    late: Callable[[T], None] | None = None) -> T:
    """``fn`` in a thread of its own (not queued behind a host's calls); ``HOST.1005`` past
    ``timeout``. ``late(result)`` disposes (in that thread) of what ``fn`` returns after its
    caller gave up or was cancelled."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    lock = threading.Lock()
    gave_up = delivered = False

    def body() -> None:
        nonlocal delivered
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - reported through the future
            error = exc
            with lock:
                delivered = not gave_up
            if delivered:
                _hand_over(loop, lambda: None if fut.done() else fut.set_exception(error))
            return
        with lock:
            delivered = not gave_up
        if delivered:
            _hand_over(loop, lambda: None if fut.done() else fut.set_result(result))
        elif late is not None:
            late(result)

    threading.Thread(target=body, name=f"zstack-libvirt-{what[:24]}", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(fut), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
        with lock:
            gave_up = not delivered
        if not gave_up:  # the answer is on its way to the loop
            if isinstance(exc, asyncio.TimeoutError):
                return await fut
            if late is not None:
                fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is not None else
                                      threading.Thread(target=late, args=(f.result(),), daemon=True).start())
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise HostErrors.exc("1005", f"{what} did not answer in {timeout:g}s") from None


# -- a host's connection ----------------------------------------------------------------------


DomainEventCallback = Callable[[str, int, int], None]
"""``(domain_uuid, event, detail)``, called on the node's event loop."""
CloseCallback = Callable[[int], None]
"""``(reason)``, called on the node's event loop when libvirt closes the connection."""


class Connection:
    """A host's ``virConnect`` and the calls using it.

    Closing waits for the calls in flight: the last one out closes the connection. Closing it
    under them is what made calls fail with libvirt's "invalid connection pointer" when a host
    was reconnected while they ran or waited; now a call starting after the close runs on the
    host's new connection, or fails with ``HOST.1001`` when there is none.
    """

    def __init__(self, conn: libvirt.virConnect, event_ids: list[int]) -> None:
        self.conn = conn
        self._event_ids = event_ids
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False
        self.closed = False
        """The connection has been closed (by :meth:`close` or the last call out)."""

    def acquire(self) -> bool:
        """Count a call in; False once the connection is being closed."""
        with self._lock:
            if self._closing:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0 and not self.closed
            self.closed = self.closed or last
        if last:
            self._dispose()

    def close(self) -> bool:
        """Refuse new calls; True when none is in flight and the caller must :meth:`dispose`."""
        with self._lock:
            self._closing = True
            now = self._users == 0 and not self.closed
            self.closed = self.closed or now
        return now

    def dispose(self) -> None:
        """Close the connection (after :meth:`close` returned True); blocks: not on the loop."""
        self._dispose()

    def _dispose(self) -> None:
        conn = self.conn
        for cb_id in self._event_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cb_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


class _PingLine:
    """The ping thread of a host and its ping connection (used only in that thread)."""

    def __init__(self, name: str) -> None:
        self.worker = HostWorker(name)
        self.conn: libvirt.virConnect | None = None

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()


class Pinger:
    """Pings one host from a thread of its own, never behind the host's other calls.

    A QEMU host is pinged over a second connection: libvirtd reads at most
    ``max_client_requests`` (5) calls of one connection at a time, so a ping on the busy main
    connection would wait for slow calls (domain starts) to finish; the ping's
    ``virConnectGetLibVersion`` is one of libvirtd's high-priority calls, answered even when its
    ordinary worker threads are all busy. The main connection is checked too (``isAlive``: no
    round trip; keepalive marks it dead). A test-driver host is pinged on its own connection (a
    second one would be another private driver, not this "host")."""

    def __init__(self, host: LibvirtHost) -> None:
        self.host = host
        self._line = _PingLine(f"zstack-ping-{host.host_uuid[:8]}")

    async def ping(self, timeout: float) -> None:
        """Check the host answers, within ``timeout`` seconds of the ping starting. Raises
        ``HOST.1001`` (no or a dead connection), ``HOST.1005`` (no answer) or ``HOST.1008``."""
        line = self._line
        try:
            await run_job(line.worker, lambda: self._probe(line), timeout, f"pinging {self.host.uri.uri}")
        except ZStackError as exc:
            if exc.error.code == "HOST.1005" and line is self._line:
                # The ping thread is stuck in libvirt: ping from a new one, on a new connection.
                self._line = _PingLine(f"zstack-ping-{self.host.host_uuid[:8]}")
                line.worker.stop()
            raise
        except Exception as exc:
            raise libvirt_error(exc, f"pinging host {self.host.host_uuid}") from exc

    def _probe(self, line: _PingLine) -> None:
        current = self.host.current
        if current is None or not current.acquire():
            raise HostErrors.exc("1001", "no open libvirt connection")
        try:
            if not current.conn.isAlive():
                raise HostErrors.exc("1001", "the libvirt connection is dead")
            if self.host.uri.is_test:
                current.conn.getLibVersion()
                return
        finally:
            current.release()
        try:
            if line.conn is None:
                line.conn = libvirt.open(self.host.uri.uri)
            line.conn.getLibVersion()
        except BaseException:
            line.drop()  # the next ping opens a new one
            raise
        finally:
            if line is not self._line:  # given up on while stuck: nobody pings on this one again
                line.drop()

    def reset(self) -> None:
        """Drop the ping connection (in the ping thread): the host is reconnecting."""
        line = self._line
        line.worker.submit(line.drop)

    def stop(self) -> None:
        self.reset()
        self._line.worker.stop()


class LibvirtHost:
    """The libvirt connection of one host, the worker threads that use it and its pinger."""

    def __init__(self, host_uuid: str, uri: str, on_domain_event: DomainEventCallback | None = None,
                 on_close: CloseCallback | None = None, workers: int = 1) -> None:
        self.host_uuid = host_uuid
        self.uri = parse_uri(uri)
        self.on_domain_event = on_domain_event
        self.on_close = on_close
        self.current: Connection | None = None
        """The open connection, or None (never connected, closed, lost)."""
        self.workers = HostWorker(f"zstack-host-{host_uuid[:8]}", size=workers)
        self.serial = HostWorker(f"zstack-hostrun-{host_uuid[:8]}")
        """One thread, calls in order: for other plugins' work on the host (``HostRunMsg``), which
        may check and then create (a bridge, a libvirt network) as one host call did before the
        threads were many."""
        self.pinger = Pinger(self)
        self.guest: Any = None
        """How guests are defined here (:class:`~zstack_kvm.hypervisor.GuestFacts`), read on connect."""
        self.generation = 0
        """Counts opens, so a close notice of an old connection is not taken for the current one."""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def conn(self) -> libvirt.virConnect | None:
        """The open ``virConnect`` (for a call that needs another host's connection too)."""
        current = self.current
        return None if current is None else current.conn

    @property
    def is_open(self) -> bool:
        return self.current is not None

    async def open(self, timeout: float) -> None:
        """Open the connection (in a thread of its own) and subscribe to domain and close events."""
        if self.current is not None:
            return
        ensure_event_loop()
        self._loop = asyncio.get_running_loop()

        generation = self.generation + 1

        def do_open() -> Connection:
            conn = libvirt.open(self.uri.uri)
            try:
                if not self.uri.is_test:
                    conn.setKeepAlive(5, 3)  # a dead daemon is noticed within ~15 s even when idle
                event_ids = [conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._domain_event, None)]
                conn.registerCloseCallback(self._closed, generation)
            except BaseException:
                conn.close()
                raise
            return Connection(conn, event_ids)

        def late(opened: Connection) -> None:  # opened after open() gave up
            if opened.close():
                opened.dispose()

        try:
            current = await in_thread(do_open, timeout, f"connecting to {self.uri.uri}", late=late)
        except libvirt.libvirtError as exc:
            raise HostErrors.exc("1005", f"cannot connect to {self.uri.uri}: {exc.get_error_message() or exc}") from None
        if self.current is not None:  # opened meanwhile by another caller: keep theirs
            await self._dispose(current)
            return
        self.current = current
        self.generation = generation

    async def run(self, fn: Callable[[libvirt.virConnect], T], timeout: float | None = None,
                  serial: bool = False) -> T:
        """``fn(conn)`` in one of this host's worker threads (``serial``: in the :attr:`serial`
        one, after the calls given to it before), on the connection open when the call starts.
        ``HOST.1001`` when not connected (then or when it starts)."""
        if self.current is None:
            raise HostErrors.exc("1001", f"host {self.host_uuid} ({self.uri.uri}) has no open libvirt connection")

        def call() -> T:
            for _ in range(3):  # a connection swapped for a new one while we looked: take the new one
                current = self.current
                if current is None:
                    break
                if current.acquire():
                    try:
                        return fn(current.conn)
                    finally:
                        current.release()
            raise HostErrors.exc("1001", f"host {self.host_uuid} ({self.uri.uri}) lost its libvirt connection "
                                         f"before the call started (it is disconnected or reconnecting)")

        return await run_job(self.serial if serial else self.workers, call, timeout, f"{self.uri.uri}")

    async def ping(self, timeout: float) -> None:
        """See :meth:`Pinger.ping`."""
        await self.pinger.ping(timeout)

    async def close(self) -> None:
        """Drop the connection (a dead one too); calls in flight finish on it first, calls not
        started yet run on the next connection. The threads stay for a later reconnect."""
        current, self.current = self.current, None
        self.pinger.reset()
        if current is not None:
            await self._dispose(current)

    async def _dispose(self, current: Connection) -> None:
        if not current.close():
            return  # the last call in flight closes it
        try:
            await in_thread(current.dispose, 10.0, f"closing {self.uri.uri}")
        except ZStackError:
            log.warning("host %s: closing the libvirt connection timed out", self.host_uuid)

    async def shutdown(self) -> None:
        """Close the connection and stop the threads (the node is stopping or the host is gone)."""
        await self.close()
        self.workers.stop()
        self.serial.stop()
        self.pinger.stop()

    # Called in libvirt's event thread: hand over to the node's loop and return at once.

    def _domain_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        if self.on_domain_event is None or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.on_domain_event, dom.UUIDString(), event, detail)
        except RuntimeError:  # the node's loop is closed
            pass

    def _closed(self, _conn: Any, reason: int, generation: Any) -> None:
        if self.on_close is None or self._loop is None or generation != self.generation:
            return
        try:
            self._loop.call_soon_threadsafe(self.on_close, reason)
        except RuntimeError:
            pass


async def open_probe(uri: str, timeout: float) -> dict[str, Any]:
    """Open ``uri`` once, off the loop, and close it: what ``KVMApiInterceptor`` uses to refuse
    an unreachable host before anything is written. Raises ``HOST.1005``."""
    parsed = parse_uri(uri)
    ensure_event_loop()
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[dict[str, Any]] = loop.create_future()

    def probe() -> None:
        try:
            conn = libvirt.open(parsed.uri)
            try:
                facts = {"type": conn.getType(), "lib_version": conn.getLibVersion()}
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported through the future
            error = exc
            _hand_over(loop, lambda: None if fut.done() else fut.set_exception(error))
            return
        _hand_over(loop, lambda: None if fut.done() else fut.set_result(facts))

    threading.Thread(target=probe, name="zstack-host-probe", daemon=True).start()
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        raise HostErrors.exc("1005", f"{uri} did not answer in {timeout:g}s") from None
    except libvirt.libvirtError as exc:
        raise HostErrors.exc("1005", f"cannot connect to {uri}: {exc.get_error_message() or exc}") from None


def _hand_over(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is gone: nobody waits for the answer any more
        pass
