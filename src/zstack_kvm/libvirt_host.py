"""One libvirt connection per host, used only from that host's own worker thread.

libvirt calls block, so none runs on the event loop: each host has a :class:`HostWorker` (one
daemon thread, jobs in order) and a :class:`LibvirtHost` that owns the host's one
``virConnect``. Everything that talks to the host (compute itself, and storage and network
through ``HostRunMsg``) goes through :meth:`LibvirtHost.run`. One connection per host matters
for ``test:///path/driver.xml`` URIs: every open of such a URI creates a *private* driver
instance, so a second connection would see a different "host".

libvirt's event loop runs in one daemon thread per process (``virEventRegisterDefaultImpl`` +
``virEventRunDefaultImpl``). Domain lifecycle events and connection-close notices arrive there
and are handed to the node's asyncio loop with ``call_soon_threadsafe``: they are hints that
trigger a reconcile, never the only source of truth.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
    "HostUri",
    "HostWorker",
    "LibvirtHost",
    "ensure_event_loop",
    "libvirt_error",
    "open_probe",
    "parse_uri",
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


# -- per-host worker ----------------------------------------------------------------------------


class HostWorker:
    """One daemon thread running jobs in submission order.

    A daemon thread (not a ``ThreadPoolExecutor``) because a libvirt call can hang on a dead
    remote host: such a worker is abandoned and replaced, and must not block interpreter exit.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.pending = 0
        """Jobs submitted and not yet finished (read from the event loop; written under the lock)."""
        self._lock = threading.Lock()
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            try:
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    fut.set_exception(exc)
            finally:
                with self._lock:
                    self.pending -= 1

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            self.pending += 1
        self._jobs.put((fn, fut))
        return fut

    def stop(self) -> None:
        self._jobs.put(None)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# -- a host's connection ----------------------------------------------------------------------


DomainEventCallback = Callable[[str, int, int], None]
"""``(domain_uuid, event, detail)``, called on the node's event loop."""
CloseCallback = Callable[[int], None]
"""``(reason)``, called on the node's event loop when libvirt closes the connection."""


class LibvirtHost:
    """The libvirt connection of one host and the worker thread that uses it."""

    def __init__(self, host_uuid: str, uri: str, on_domain_event: DomainEventCallback | None = None,
                 on_close: CloseCallback | None = None) -> None:
        self.host_uuid = host_uuid
        self.uri = parse_uri(uri)
        self.on_domain_event = on_domain_event
        self.on_close = on_close
        self.conn: libvirt.virConnect | None = None
        self.worker = HostWorker(f"zstack-host-{host_uuid[:8]}")
        self.guest: Any = None
        """How guests are defined here (:class:`~zstack_kvm.hypervisor.GuestFacts`), read on connect."""
        self.generation = 0
        """Counts opens, so a close notice of an old connection is not taken for the current one."""
        self._event_ids: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self.conn is not None

    @property
    def busy(self) -> bool:
        """Work is queued or running on the host's worker. A ping then would wait behind it and
        time out although the host is fine; keepalive on the connection covers a hung daemon."""
        return self.worker.pending > 0

    async def _submit(self, fn: Callable[[], T], timeout: float | None) -> T:
        fut = asyncio.wrap_future(self.worker.submit(fn))
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            # The thread is stuck in libvirt: abandon it so later work on this host is not
            # queued behind a call that may never return.
            log.warning("host %s: libvirt call did not return in %gs; replacing its worker", self.host_uuid, timeout)
            self.worker.stop()
            self.worker = HostWorker(f"zstack-host-{self.host_uuid[:8]}")
            raise HostErrors.exc("1005", f"{self.uri.uri} did not answer in {timeout:g}s") from None

    async def open(self, timeout: float) -> None:
        """Open the connection (in the worker) and subscribe to domain and close events."""
        if self.conn is not None:
            return
        ensure_event_loop()
        self._loop = asyncio.get_running_loop()

        generation = self.generation + 1

        def do_open() -> libvirt.virConnect:
            conn = libvirt.open(self.uri.uri)
            try:
                if not self.uri.is_test:
                    conn.setKeepAlive(5, 3)  # a dead daemon is noticed within ~15 s even when idle
                self._event_ids = [conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._domain_event, None)]
                conn.registerCloseCallback(self._closed, generation)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            self.conn = await self._submit(do_open, timeout)
            self.generation = generation
        except ZStackError:
            raise
        except libvirt.libvirtError as exc:
            raise HostErrors.exc("1005", f"cannot connect to {self.uri.uri}: {exc.get_error_message() or exc}") from None

    async def run(self, fn: Callable[[libvirt.virConnect], T], timeout: float | None = None) -> T:
        """``fn(conn)`` in this host's worker thread. ``HOST.1001`` when not connected."""
        conn = self.conn
        if conn is None:
            raise HostErrors.exc("1001", f"host {self.host_uuid} ({self.uri.uri}) has no open libvirt connection")
        return await self._submit(lambda: fn(conn), timeout)

    async def close(self) -> None:
        """Drop the connection (a dead one too); the worker stays for a later reconnect."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        ids, self._event_ids = self._event_ids, []

        def do_close() -> None:
            for cb_id in ids:
                try:
                    conn.domainEventDeregisterAny(cb_id)
                except libvirt.libvirtError:
                    pass
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

        try:
            await self._submit(do_close, 10.0)
        except ZStackError:
            log.warning("host %s: closing the libvirt connection timed out", self.host_uuid)

    async def shutdown(self) -> None:
        """Close the connection and stop the worker (the node is stopping or the host is gone)."""
        await self.close()
        self.worker.stop()

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
