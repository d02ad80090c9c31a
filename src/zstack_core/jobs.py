"""API jobs kept in the database, so a long API's outcome survives a node restart."""

from __future__ import annotations

import datetime
import json
from collections.abc import Collection

import peewee

from .db import BaseModel, Database, utcnow
from .errors import ErrorCode
from .mediator import ApiJob, JobStore
from .prepared import Markers, Prepared

__all__ = ["ApiJobVO", "DatabaseJobStore"]


class ApiJobVO(BaseModel):
    id = peewee.CharField(primary_key=True, max_length=32)
    api_name = peewee.CharField(max_length=128)
    state = peewee.CharField(max_length=16, index=True)
    progress = peewee.IntegerField(null=True)
    result = peewee.TextField(null=True)
    error = peewee.TextField(null=True)
    account_uuid = peewee.CharField(max_length=32, null=True)
    node_uuid = peewee.CharField(max_length=32, null=True, index=True)
    created_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "api_job"


_COLUMNS = ("id", "api_name", "state", "progress", "result", "error", "account_uuid", "node_uuid", "created_at",
            "finished_at")


def _param(p: Markers, column: str) -> object:
    return p.progress_int if column == "progress" else getattr(p, column)  # an integer column


_STATEMENTS = {
    "insert": Prepared(lambda p: ApiJobVO.insert({getattr(ApiJobVO, c): _param(p, c) for c in _COLUMNS})),
    "update": Prepared(lambda p: ApiJobVO.update({getattr(ApiJobVO, c): _param(p, c) for c in _COLUMNS
                                                  if c not in ("id", "node_uuid")}).where(ApiJobVO.id == p.id)),
}
"""Every long API writes both: compiled once (see :mod:`zstack_core.prepared`)."""


def _run_compiled(kind: str, values: dict[str, object]) -> int:
    """Run the job statement ``kind`` (``insert`` or ``update``) with ``values``; rows affected."""
    params = {("progress_int" if k == "progress" else k): v for k, v in values.items()}
    return int(_STATEMENTS[kind].run(**params).rowcount)


def _ts(value: float | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromtimestamp(value, datetime.timezone.utc).replace(tzinfo=None)


def _epoch(value: datetime.datetime | None) -> float | None:
    return None if value is None else value.replace(tzinfo=datetime.timezone.utc).timestamp()


class DatabaseJobStore(JobStore):
    """Jobs in the ``api_job`` table. A job running on this node is also kept in memory until it
    finishes, so the handler's progress reports and the final outcome update one object (a copy
    read back from the database would lose the progress when the outcome is written).

    The last :attr:`FINISHED_KEPT` jobs that finished here stay in memory too: a client polls
    its job until it has finished, so the poll that sees the outcome would otherwise be a
    database read per job. A finished job never changes again, so the copy cannot go stale."""

    FINISHED_KEPT = 2000

    def __init__(self, db: Database, node_uuid: str | None = None) -> None:
        super().__init__()
        self.db = db
        self.node_uuid = node_uuid
        self._finished: dict[str, ApiJob] = {}

    def _row(self, job: ApiJob) -> dict[str, object]:
        return {
            "id": job.id, "api_name": job.api_name, "state": job.state, "progress": job.progress,
            "result": None if job.result is None else json.dumps(job.result, default=str),
            "error": None if job.error is None else json.dumps(job.error.to_dict()),
            "account_uuid": job.account_uuid, "node_uuid": self.node_uuid,
            "created_at": _ts(job.created_at), "finished_at": _ts(job.finished_at),
        }

    async def create(self, job: ApiJob) -> None:
        await self.db.run(lambda: _run_compiled("insert", self._row(job)))
        self._jobs[job.id] = job

    async def update(self, job: ApiJob) -> None:
        # A job stays the job of the node that created it (the one that will record its outcome),
        # even when another node handles its message and reports progress.
        def write() -> None:
            row = self._row(job)
            node_uuid = row.pop("node_uuid")
            job_id = row.pop("id")
            if not _run_compiled("update", {**row, "id": job_id}):
                # (MySQL counts changed rows, not matched ones: 0 may mean "already so".)
                ApiJobVO.insert(id=job_id, node_uuid=node_uuid, **row).on_conflict_ignore().execute()

        await self.db.run(write)
        if job.state != "Running":
            self._jobs.pop(job.id, None)
            self._finished[job.id] = job
            while len(self._finished) > self.FINISHED_KEPT:
                self._finished.pop(next(iter(self._finished)))
            self._ended(job.id)  # written first: a poll woken by it reads the outcome anywhere

    async def get(self, job_id: str) -> ApiJob | None:
        live = self._jobs.get(job_id) or self._finished.get(job_id)
        if live is not None:
            return live
        row = await self.db.run(lambda: ApiJobVO.get_or_none(ApiJobVO.id == job_id))
        if row is None:
            return None
        return ApiJob(
            id=row.id, api_name=row.api_name, state=row.state, progress=row.progress,
            result=None if row.result is None else json.loads(row.result),
            error=None if row.error is None else ErrorCode.from_dict(json.loads(row.error)),
            account_uuid=row.account_uuid, created_at=_epoch(row.created_at) or 0.0,
            finished_at=_epoch(row.finished_at),
        )

    async def fail_running(self, error: ErrorCode, node_uuid: str | None = None, *,
                           alive: Collection[str] | None = None) -> int:
        """Jobs left Running by a node that is gone end Failed with ``error``, never stuck.

        ``node_uuid``: only that node's jobs. ``alive``: the jobs of every node but these (and
        jobs of no node), for a node joining a cluster whose dead members were already removed.
        """

        def fail() -> int:
            q = ApiJobVO.update(state="Failed", error=json.dumps(error.to_dict()), finished_at=utcnow()).where(
                ApiJobVO.state == "Running")
            if node_uuid is not None:
                q = q.where(ApiJobVO.node_uuid == node_uuid)
            if alive is not None:
                q = q.where(ApiJobVO.node_uuid.is_null() | ApiJobVO.node_uuid.not_in(list(alive) or [""]))
            return int(q.execute())

        return await self.db.run(fail)
