"""The API pipeline (ZStack's ``ApiMediator``): JSON in, interceptors, the service, a reply out.

An API call is structured from JSON with cattrs (bad input: ``SYS.1007`` naming the field), then
passes global interceptors (by ``order``), the service's interceptors and the message's own
interceptors, any of which may refuse it, and is then sent over the bus to its service. Long APIs
(``LONG_RUNNING = True``) answer at once with a job whose status and result can be read later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .api import ApiInterceptor, ApiRegistration
from .errors import ErrorCode, SysErrors, ZStackError, err
from .messages import APIMessage, MessageReply
from .serialize import structure

if TYPE_CHECKING:
    from .node import ManagementNode

__all__ = ["ApiJob", "ApiMediator", "JobStore", "resource_uuid_of"]

log = logging.getLogger("zstack.api")


@attrs.define(kw_only=True)
class ApiJob:
    """A long API's progress: ``Running``, then ``Succeeded`` with a result or ``Failed``."""

    id: str
    api_name: str
    state: str = "Running"
    progress: int | None = None
    result: dict[str, Any] | None = None
    error: ErrorCode | None = None
    account_uuid: str | None = None
    created_at: float = attrs.field(factory=time.time)
    finished_at: float | None = None


class JobStore:
    """Where jobs are kept. This one is in memory; the database-backed one survives restarts."""

    def __init__(self) -> None:
        self._jobs: dict[str, ApiJob] = {}
        self._waiters: dict[str, asyncio.Event] = {}

    async def create(self, job: ApiJob) -> None:
        self._jobs[job.id] = job

    async def update(self, job: ApiJob) -> None:
        self._jobs[job.id] = job
        if job.state != "Running":
            self._ended(job.id)

    async def wait(self, job_id: str, timeout: float) -> bool:
        """Until job ``job_id`` has finished, at most ``timeout`` seconds: what a poll that holds
        (``GET /v1/api-jobs/{id}?waitSeconds=N``) and :meth:`ApiMediator.wait_job` wait on,
        instead of asking again and again. False at once when the job is not running on this
        node (finished, another node's, unknown): the caller reads it, or polls."""
        job = self._jobs.get(job_id)
        if job is None or job.state != "Running":
            return False
        event = self._waiters.get(job_id)
        if event is None:
            event = self._waiters[job_id] = asyncio.Event()
        if timeout > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        return True

    def _ended(self, job_id: str) -> None:
        event = self._waiters.pop(job_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Every :meth:`wait` returns now (the node is stopping: held polls answer at once
        rather than hold up the HTTP server's shutdown)."""
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()

    async def get(self, job_id: str) -> ApiJob | None:
        return self._jobs.get(job_id)

    async def fail_running(self, error: ErrorCode) -> int:
        """Mark jobs left Running by a previous run of the node as Failed."""
        n = 0
        for job in self._jobs.values():
            if job.state == "Running":
                job.state, job.error, job.finished_at = "Failed", error, time.time()
                n += 1
        return n


def resource_uuid_of(msg: APIMessage, reg: ApiRegistration) -> str | None:
    """The resource an API message acts on, whose owner node handles it (ZStack routes a message
    to the node the consistent hash gives its resource): the field named by the message class's
    ``RESOURCE_UUID_FIELD`` if it declares one, else ``uuid`` when the registration names a
    ``resource``. None: any node may handle it (creates, queries...)."""
    field = getattr(type(msg), "RESOURCE_UUID_FIELD", None) or ("uuid" if reg.resource else None)
    value = getattr(msg, field, None) if field else None
    return value if isinstance(value, str) and value else None


class ApiMediator:
    """Holds the API registry and runs calls through the interceptor chain."""

    def __init__(self, node: ManagementNode) -> None:
        self.node = node
        self.registrations: dict[str, ApiRegistration] = {}
        self._by_class: dict[type[APIMessage], ApiRegistration] = {}
        self.global_interceptors: list[ApiInterceptor] = []
        self.service_interceptors: dict[str, list[ApiInterceptor]] = {}
        self.jobs: JobStore = JobStore()
        self._owners: dict[str, str] = {}
        self._job_tasks: set[asyncio.Task[Any]] = set()
        self._job_slots: asyncio.Semaphore | None = None

    # -- registry -----------------------------------------------------------------------------

    def register(self, registration: ApiRegistration, plugin: str) -> None:
        name = registration.name
        if name in self.registrations:
            raise ValueError(f"API {name!r} is registered by both plugin {self._owners[name]!r} and plugin {plugin!r}")
        self.registrations[name] = registration
        self._by_class[registration.message] = registration
        self._owners[name] = plugin

    def add_global_interceptors(self, interceptors: Sequence[ApiInterceptor]) -> None:
        self.global_interceptors.extend(interceptors)
        self.global_interceptors.sort(key=lambda i: i.order)  # stable: ties keep plugin order

    def owner(self, api_name: str) -> str:
        return self._owners[api_name]

    def registration_of(self, msg: APIMessage | type[APIMessage]) -> ApiRegistration:
        cls = msg if isinstance(msg, type) else type(msg)
        reg = self._by_class.get(cls)
        if reg is None:
            raise SysErrors.exc("1008", f"{cls.__name__} is not a registered API message")
        return reg

    def message_class(self, api_name: str) -> type[APIMessage]:
        reg = self.registrations.get(api_name)
        if reg is None:
            raise SysErrors.exc("1008", f"no API named {api_name!r}", api=api_name)
        return reg.message

    def build(self, api_name: str, body: Any) -> APIMessage:
        """Structure ``body`` (JSON-like) into the API message ``api_name``."""
        return structure(body, self.message_class(api_name))

    # -- calling ------------------------------------------------------------------------------

    def interceptors_for(self, msg: APIMessage) -> list[ApiInterceptor]:
        reg = self.registration_of(msg)
        chain = [i for i in self.global_interceptors if i.applies_to(msg)]
        chain += [i for i in self.service_interceptors.get(reg.service_id, ()) if i.applies_to(msg)]
        chain += [i for i in reg.interceptors if i.applies_to(msg)]
        return chain

    async def intercept(self, msg: APIMessage) -> APIMessage:
        for interceptor in self.interceptors_for(msg):
            try:
                result = await interceptor.intercept(msg, self.node)
            except ZStackError:
                raise
            except Exception as exc:
                log.exception("interceptor %s raised", interceptor.interceptor_name)
                raise SysErrors.exc("1000", f"interceptor {interceptor.interceptor_name} raised "
                                            f"{type(exc).__name__}: {exc}") from exc
            if result is not None:
                msg = result
        return msg

    async def call(self, msg: APIMessage) -> MessageReply:
        """Run ``msg`` through the interceptors and its service; return the reply.

        Errors come back in the reply, never raised. A long API is awaited to the end here; use
        :meth:`submit` to get its job instead.
        """
        try:
            reg = self.registration_of(msg)
            self.node.check_running()
            msg = await self.intercept(msg)
        except ZStackError as exc:
            return MessageReply(error=exc.error)
        return await self.node.bus.call(msg, reg.service_id, resource_uuid=resource_uuid_of(msg, reg))

    async def submit(self, msg: APIMessage) -> ApiJob | MessageReply:
        """Start ``msg``. A long API returns its :class:`ApiJob` once interceptors accepted it;
        other APIs return their reply."""
        if not type(msg).LONG_RUNNING:
            return await self.call(msg)
        try:
            reg = self.registration_of(msg)
            self.node.check_running()
            msg = await self.intercept(msg)
        except ZStackError as exc:
            return MessageReply(error=exc.error)
        job = ApiJob(id=uuid.uuid4().hex, api_name=reg.name, account_uuid=msg.headers.get("account_uuid"))
        msg.headers["job_id"] = job.id
        await self.jobs.create(job)
        task = asyncio.get_running_loop().create_task(self._run_job(job, msg, reg))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        return job

    def _slots(self) -> asyncio.Semaphore:
        if self._job_slots is None:
            self._job_slots = asyncio.Semaphore(max(1, int(self.node.properties["api.max_running_jobs"])))
        return self._job_slots

    async def _run_job(self, job: ApiJob, msg: APIMessage, reg: ApiRegistration) -> None:
        from .serialize import unstructure

        # Like ZStack's API thread pool: thousands of jobs submitted at once would otherwise all
        # interleave their flows, each holding what it reserved (addresses, capacity) while the
        # others run, and finish together late. A bounded number run; the rest wait in order.
        # The message's timeout starts when it runs, not while it waits for a slot.
        async with self._slots():
            try:
                reply = await self.node.bus.call(msg, reg.service_id, resource_uuid=resource_uuid_of(msg, reg))
            except Exception as exc:  # pragma: no cover - bus.call does not raise
                reply = MessageReply(error=err("1000", str(exc)))
        job.finished_at = time.time()
        if reply.error is None:
            job.state, job.result, job.progress = "Succeeded", unstructure(reply), 100
        else:
            job.state, job.error = "Failed", reply.error
        await self.jobs.update(job)

    async def report_progress(self, job_id: str | None, progress: int) -> None:
        """Called by long handlers (``msg.headers["job_id"]``) to report 0-100 progress."""
        if not job_id:
            return
        job = await self.jobs.get(job_id)
        if job is not None and job.state == "Running":
            job.progress = max(0, min(100, int(progress)))
            await self.jobs.update(job)

    async def wait_job(self, job_id: str, timeout: float = 60.0, poll: float = 0.02) -> ApiJob:
        """The job once it has finished (``SYS.1001`` after ``timeout``). A job of this node is
        waited on; one another node runs is read every ``poll`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.jobs.get(job_id)
            if job is None:
                raise SysErrors.exc("1009", f"no job {job_id}")
            if job.state != "Running":
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise SysErrors.exc("1001", f"job {job_id} ({job.api_name}) still running after {timeout:g}s")
            if not await self.jobs.wait(job_id, left):
                await asyncio.sleep(poll)

    async def drain(self) -> None:
        if self._job_tasks:
            await asyncio.gather(*list(self._job_tasks), return_exceptions=True)
