"""A waiter cancelled in the same loop iteration as the holder releases the signature.

Found by the scale benchmark (bus timeouts cancelling thousands of queued VM creates): the
holder's release skipped the cancelled waiter and retired the signature, then the cancelled
task tried to retire it again and raised ``KeyError`` instead of ``CancelledError``.
"""

from __future__ import annotations

import asyncio

import pytest

from zstack_core import TaskQueues


async def test_waiter_cancelled_while_the_holder_releases_gets_cancelled_error() -> None:
    queues = TaskQueues()
    release = asyncio.Event()

    async def hold() -> str:
        await release.wait()
        return "held"

    holder = asyncio.create_task(queues.run("vm-1", hold))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(queues.run("vm-1", lambda: asyncio.sleep(0)))
    await asyncio.sleep(0)
    assert queues.pending("vm-1") == 1
    # The holder wakes first; the waiter is cancelled before either task runs again, so the
    # holder's release finds the cancelled waiter and retires the signature.
    release.set()
    waiter.cancel()
    assert await holder == "held"
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(queues) == 0
    # The signature still works afterwards.
    assert await queues.run("vm-1", lambda: asyncio.sleep(0, "again")) == "again"
