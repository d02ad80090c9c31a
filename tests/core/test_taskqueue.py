"""Per-resource task queues (ZStack's chain tasks with sync signatures): order kept per signature,
different signatures concurrent, ``level`` respected, bounded with back-pressure, cancellation safe,
idle signatures dropped."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zstack_core import TaskQueues, ZStackError


class Probe:
    """Records starts and tracks how many tasks of each signature run at once."""

    def __init__(self) -> None:
        self.started: dict[str, list[int]] = defaultdict(list)
        self.running: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.overlap_seen = False  # two signatures running at the same moment

    def task(self, sig: str, index: int, steps: int) -> Any:
        async def fn() -> int:
            self.started[sig].append(index)
            self.running[sig] += 1
            self.peak[sig] = max(self.peak[sig], self.running[sig])
            if sum(1 for n in self.running.values() if n) > 1:
                self.overlap_seen = True
            for _ in range(steps):
                await asyncio.sleep(0)
            self.running[sig] -= 1
            return index

        return fn


submissions = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(jobs=submissions, level=st.integers(1, 3))
def test_order_kept_per_signature_and_level_respected(jobs: list[tuple[int, int]], level: int) -> None:
    probe = Probe()
    queues = TaskQueues()

    async def scenario() -> list[int]:
        tasks = [asyncio.create_task(queues.run(f"vm-{sig}", probe.task(f"vm-{sig}", i, steps), level=level))
                 for i, (sig, steps) in enumerate(jobs)]
        return list(await asyncio.gather(*tasks))

    results = asyncio.run(scenario())
    assert results == list(range(len(jobs)))
    for sig in {f"vm-{s}" for s, _ in jobs}:
        submitted = [i for i, (s, _) in enumerate(jobs) if f"vm-{s}" == sig]
        assert probe.started[sig] == submitted  # tasks of one signature start in submission order
        assert probe.peak[sig] <= level
    assert len(queues) == 0  # idle signatures are dropped


@settings(max_examples=50, deadline=None)
@given(level=st.integers(1, 5), extra=st.integers(0, 5), signatures=st.integers(1, 4))
def test_level_is_reached_and_signatures_run_concurrently(level: int, extra: int, signatures: int) -> None:
    queues = TaskQueues()

    async def scenario() -> None:
        gate = asyncio.Event()
        running: dict[str, int] = defaultdict(int)
        peak: dict[str, int] = defaultdict(int)

        async def hold(sig: str) -> None:
            running[sig] += 1
            peak[sig] = max(peak[sig], running[sig])
            await gate.wait()
            running[sig] -= 1

        sigs = [f"host-{n}" for n in range(signatures)]
        tasks = [asyncio.create_task(queues.run(sig, lambda s=sig: hold(s), level=level))  # type: ignore[misc]
                 for sig in sigs for _ in range(level + extra)]
        for _ in range(3):
            await asyncio.sleep(0)
        for sig in sigs:  # every signature at its level at the same moment
            assert queues.running(sig) == level and running[sig] == level
            assert queues.pending(sig) == extra
        gate.set()
        await asyncio.gather(*tasks)
        assert all(peak[sig] == level for sig in sigs)

    asyncio.run(scenario())
    assert len(queues) == 0


async def test_different_signatures_interleave() -> None:
    probe = Probe()
    queues = TaskQueues()
    await asyncio.gather(*(queues.run(f"vm-{i % 2}", probe.task(f"vm-{i % 2}", i, 3)) for i in range(6)))
    assert probe.overlap_seen
    assert probe.peak["vm-0"] == probe.peak["vm-1"] == 1


async def test_the_first_task_of_an_idle_signature_sets_its_level() -> None:
    queues = TaskQueues()
    gate = asyncio.Event()
    tasks = [asyncio.create_task(queues.run("vm-1", gate.wait, level=2))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(queues.run("vm-1", gate.wait, level=5)) for _ in range(4)]
    await asyncio.sleep(0)
    assert queues.running("vm-1") == 2 and queues.pending("vm-1") == 3
    gate.set()
    await asyncio.gather(*tasks)
    assert len(queues) == 0
    with pytest.raises(ValueError):
        await queues.run("vm-1", gate.wait, level=0)


async def test_bounded_queue_gives_sys_1005() -> None:
    queues = TaskQueues(max_pending=3)
    gate = asyncio.Event()
    calls: list[str] = []

    async def work(name: str) -> str:
        calls.append(name)
        await gate.wait()
        return name

    tasks = [asyncio.create_task(queues.run("vm-1", lambda n=n: work(n), level=2)) for n in "abcde"]  # type: ignore[misc]
    await asyncio.sleep(0)
    assert queues.running("vm-1") == 2 and queues.pending("vm-1") == 3
    with pytest.raises(ZStackError) as info:
        await queues.run("vm-1", lambda: work("refused"))
    assert info.value.code == "SYS.1005" and "vm-1" in info.value.error.details
    assert "refused" not in calls
    assert await queues.run("vm-2", lambda: asyncio.sleep(0, "other")) == "other"  # bounds are per signature
    gate.set()
    assert await asyncio.gather(*tasks) == list("abcde")
    assert len(queues) == 0


async def test_an_exception_releases_the_slot() -> None:
    queues = TaskQueues()

    async def boom() -> None:
        raise RuntimeError("task failed")

    with pytest.raises(RuntimeError):
        await queues.run("vm-1", boom)
    assert len(queues) == 0
    assert await queues.run("vm-1", lambda: asyncio.sleep(0, 7)) == 7


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 12), data=st.data())
def test_cancelling_waiting_tasks_keeps_order_and_leaks_nothing(n: int, data: st.DataObject) -> None:
    cancel = data.draw(st.sets(st.integers(1, n - 1)), label="cancel")  # task 0 runs, the rest wait
    queues = TaskQueues()
    started: list[int] = []

    async def scenario() -> None:
        gate = asyncio.Event()

        async def work(i: int) -> int:
            started.append(i)
            if i == 0:
                await gate.wait()
            await asyncio.sleep(0)
            return i

        tasks = [asyncio.create_task(queues.run("vm-x", lambda i=i: work(i))) for i in range(n)]  # type: ignore[misc]
        await asyncio.sleep(0)
        assert started == [0] and queues.pending("vm-x") == n - 1
        for i in cancel:
            tasks[i].cancel()
        await asyncio.sleep(0)
        assert queues.pending("vm-x") == n - 1 - len(cancel)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i in cancel:
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert result == i

    asyncio.run(scenario())
    assert started == [i for i in range(n) if i not in cancel]
    assert len(queues) == 0


async def test_cancelled_just_after_being_handed_the_slot() -> None:
    """The running task finishes and hands its slot to B, and B is cancelled before it resumes:
    B must pass the slot on to C, or the signature would stay blocked for ever."""
    queues = TaskQueues()
    order: list[str] = []
    b_task: asyncio.Task[Any] | None = None

    async def first() -> None:
        await queues.run("vm-1", lambda: asyncio.sleep(0))
        assert b_task is not None
        b_task.cancel()  # B's waiter is already resolved; B has not run yet
        order.append("a")

    async def b() -> None:
        order.append("b")

    async def c() -> None:
        order.append("c")

    a_task = asyncio.create_task(first())
    await asyncio.sleep(0)
    b_task = asyncio.create_task(queues.run("vm-1", b))
    c_task = asyncio.create_task(queues.run("vm-1", c))
    await a_task
    with pytest.raises(asyncio.CancelledError):
        await b_task
    await asyncio.wait_for(c_task, 2)
    assert order == ["a", "c"]
    assert len(queues) == 0


async def test_cancelling_the_running_task_lets_the_next_one_run() -> None:
    queues = TaskQueues()
    order: list[str] = []
    running = asyncio.Event()

    async def hang() -> None:
        running.set()
        await asyncio.Event().wait()

    async def after() -> None:
        order.append("after")

    hung = asyncio.create_task(queues.run("vm-1", hang))
    await running.wait()
    nxt = asyncio.create_task(queues.run("vm-1", after))
    await asyncio.sleep(0)
    assert order == []
    hung.cancel()
    await asyncio.wait_for(nxt, 2)
    assert order == ["after"]
    assert len(queues) == 0


async def test_node_has_task_queues(data_dir: Any) -> None:
    from zstack_core import ManagementNode

    async with ManagementNode(load_entry_points=False, data_dir=data_dir) as node:
        assert await node.tasks.run("vm-abc", lambda: asyncio.sleep(0, "ok")) == "ok"
        assert len(node.tasks) == 0
