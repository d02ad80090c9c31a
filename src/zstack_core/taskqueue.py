"""Per-resource ordered task queues (ZStack's ``ThreadFacade`` chain tasks).

Instead of locks, work on one resource is serialized by a *sync signature* such as
``vm-<uuid>``: tasks with the same signature run in submission order, at most ``level`` at a time;
tasks with different signatures run concurrently. Each signature's queue is bounded: when it is
full the submitter gets ``SYS.1005`` (busy) at once rather than waiting without limit.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import SysErrors

__all__ = ["TaskQueues"]

T = TypeVar("T")


class _Signature:
    __slots__ = ("level", "running", "waiters")

    def __init__(self, level: int) -> None:
        self.level = level
        self.running = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class TaskQueues:
    """Run coroutines one signature at a time. Idle signatures cost nothing (they are dropped)."""

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._signatures: dict[str, _Signature] = {}

    def pending(self, signature: str) -> int:
        s = self._signatures.get(signature)
        return 0 if s is None else len(s.waiters)

    def running(self, signature: str) -> int:
        s = self._signatures.get(signature)
        return 0 if s is None else s.running

    def __len__(self) -> int:
        return len(self._signatures)

    async def run(self, signature: str, fn: Callable[[], Awaitable[T]], *, level: int = 1) -> T:
        """Await ``fn()`` once it is this task's turn on ``signature``.

        ``level`` is how many tasks of the signature may run at once; the first task of an idle
        signature sets it.
        """
        if level < 1:
            raise ValueError("level must be at least 1")
        s = self._signatures.get(signature)
        if s is None:
            s = self._signatures[signature] = _Signature(level)
        if s.running < s.level and not s.waiters:
            s.running += 1
        else:
            if len(s.waiters) >= self.max_pending:
                raise SysErrors.exc("1005", f"{len(s.waiters)} tasks already wait on {signature}")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            s.waiters.append(waiter)
            try:
                await waiter  # the releasing task hands its slot over (running stays counted)
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(signature, s)  # got the slot just as we were cancelled
                else:
                    if waiter in s.waiters:
                        s.waiters.remove(waiter)
                    # _release may already have dropped the signature (it skips a cancelled
                    # waiter and, finding no other, retires it): drop it only if still ours.
                    if not s.running and not s.waiters and self._signatures.get(signature) is s:
                        del self._signatures[signature]
                raise
        try:
            return await fn()
        finally:
            self._release(signature, s)

    def _release(self, signature: str, s: _Signature) -> None:
        while s.waiters:
            waiter = s.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # slot passes to the next waiter in order
                return
        s.running -= 1
        if not s.running:
            del self._signatures[signature]
