"""Durable API jobs: a long API's job record is kept in the database, so its outcome can be read
after a node restart, and a job left Running by a node that died ends Failed, never stuck."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from zstack_core import ApiJob

from .conftest import every_backend, new_node
from .plugins import LabPlugin

TESTS_DIR = Path(__file__).resolve().parent.parent


@every_backend
async def test_job_outcomes_survive_a_restart(db_url: str, data_dir: Path) -> None:
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        baked = await node.submit_api(node.api.build("BakeCake", {"flavour": "lemon"}))
        burnt = await node.submit_api(node.api.build("BakeCake", {"flavour": "plum", "burn": True}))
        assert isinstance(baked, ApiJob) and isinstance(burnt, ApiJob)
        await node.api.wait_job(baked.id)
        await node.api.wait_job(burnt.id)
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        done = await node.api.jobs.get(baked.id)
        assert done is not None
        assert (done.api_name, done.state, done.progress) == ("BakeCake", "Succeeded", 100)
        assert done.result is not None and done.result["cake"] == "lemon cake"
        assert done.finished_at is not None and done.finished_at >= done.created_at
        failed = await node.api.jobs.get(burnt.id)
        assert failed is not None and failed.state == "Failed" and failed.error is not None
        assert (failed.error.code, failed.error.details) == ("LAB.1000", "the plum cake burnt")
        assert failed.progress == 50  # the last progress it reported
        assert await node.api.jobs.get("0" * 32) is None


NODE_THAT_DIES = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from persistence.plugins import LabPlugin
    from zstack_core import ManagementNode

    async def main():
        lab = LabPlugin()
        node = ManagementNode(plugins=[lab], load_entry_points=False, data_dir={data!r},
                              settings={{"database.url": {url!r}}})
        await node.start()
        job = await node.submit_api(node.api.build("BakeCake", {{"flavour": "cherry", "hang": True}}))
        await lab.service.oven_started.wait()
        print(job.id, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_jobs_left_running_by_a_dead_node_end_failed(db_url: str, data_dir: Path) -> None:
    script = NODE_THAT_DIES.format(tests=str(TESTS_DIR), data=str(data_dir), url=db_url)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        assert job_id, proc.stderr.read() if proc.stderr else "the node printed no job"
    finally:
        proc.send_signal(signal.SIGKILL)  # the node dies without stopping: no chance to finish the job
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        job = await node.api.jobs.get(job_id)
        assert job is not None
        assert (job.api_name, job.state, job.progress) == ("BakeCake", "Failed", 50)
        assert job.error is not None and job.error.code == "SYS.1006"
        assert job.error.details == "the management node running this job stopped"
        assert job.finished_at is not None
        # and waiting for it answers at once instead of hanging
        assert (await node.api.wait_job(job_id, timeout=1)).state == "Failed"


@every_backend
async def test_finished_jobs_are_answered_from_memory_then_from_the_database(db_url: str, data_dir: Path) -> None:
    """The jobs that finished last on this node are kept in memory (the poll that sees a job's
    outcome reads no row); older ones are read back from the database, the same."""
    async with new_node(db_url, data_dir, LabPlugin()) as node:
        store = node.api.jobs
        store.FINISHED_KEPT = 1  # type: ignore[attr-defined]
        first = await node.submit_api(node.api.build("BakeCake", {"flavour": "lemon"}))
        assert isinstance(first, ApiJob)
        await node.api.drain()  # its outcome recorded (the job reads finished a moment before)
        assert await store.get(first.id) is first  # the finished job itself, not a row read back
        second = await node.submit_api(node.api.build("BakeCake", {"flavour": "plum"}))
        assert isinstance(second, ApiJob)
        await node.api.drain()
        again = await store.get(first.id)  # pushed out by the second: from the database
        assert again is not None and again is not first
        assert (again.state, again.progress, again.result) == ("Succeeded", 100, first.result)
        assert await store.get(second.id) is second
