"""Leases and fencing between stores that share one database (two workers' views of it).

A store that claimed or took over a task writes to it only while the task's fencing token is
the one it got: after another store took the task over, every write for it raises LeaseLost
and leaves the database as the new owner made it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from durable.exceptions import LeaseLost
from durable.records import LogFragment, ProcessHandle, StepCheckpoint, Stream
from durable.recovery import find_orphans
from durable.states import TaskState
from durable.store import Store
from tests.support import Database, make_store, persisted_only

CREATED, RUNNING, RECOVERING = TaskState.CREATED, TaskState.RUNNING, TaskState.RECOVERING
Body = Callable[[Store, Store], Awaitable[Any]]


pytestmark = persisted_only


def with_two_stores(database: Database, body: Body) -> Any:
    """Run ``body`` with two stores open on ``database``, as two workers have."""

    async def main() -> Any:
        first, second = make_store(database), make_store(database)
        await first.open()
        await second.open()
        try:
            return await body(first, second)
        finally:
            await first.close()
            await second.close()

    return anyio.run(main)


def test_a_worker_that_lost_its_lease_writes_nothing_more(database: Database,
                                                          new_task: Any) -> None:
    """After B takes over A's task, A's transition, output, checkpoint and process writes all
    raise LeaseLost and change nothing; A's next heartbeat reports the task lost."""
    task = new_task()

    async def body(a: Store, b: Store) -> None:
        await a.create_task(task)
        [claimed] = await a.claim(worker="A", lease_seconds=0.01)
        await a.transition(task.id, CREATED, RUNNING, worker="A")
        await a.append_logs([LogFragment(task.id, Stream.STDOUT, 0, time.time(), b"a0")])
        await anyio.sleep(0.05)  # A's lease passes without a heartbeat
        await b.transition(task.id, RUNNING, RECOVERING, worker="B",
                           fields={"owner": "B", "lease_expires_at": time.time() + 30})
        taken = await b.get_task(task.id)
        assert (taken.owner, taken.fence) == ("B", claimed.fence + 1)

        with pytest.raises(LeaseLost):
            await a.transition(task.id, RECOVERING, TaskState.COMPLETED, worker="A")
        with pytest.raises(LeaseLost):
            await a.append_logs([LogFragment(task.id, Stream.STDOUT, 1, time.time(), b"a1")])
        with pytest.raises(LeaseLost):
            now = time.time()
            await a.save_step(StepCheckpoint(task.id, 0, "step", "completed", now, now))
        with pytest.raises(LeaseLost):
            await a.save_process(ProcessHandle(task.id, 1, "/tmp/run", "host"))
        assert await a.heartbeat("A") == set()  # already forgotten after the LeaseLost

        after = await b.get_task(task.id)
        assert (after.state, after.owner, after.fence) == (RECOVERING, "B", taken.fence)
        assert [f.data for f in await b.read_logs(task.id)] == [b"a0"]
        assert await b.load_steps(task.id) == []
        assert await b.get_process(task.id) is None
        await b.transition(task.id, RECOVERING, RUNNING, worker="B")  # B writes on

    with_two_stores(database, body)


def test_heartbeat_reports_tasks_taken_over_before_any_write(database: Database,
                                                             new_task: Any) -> None:
    """A paused worker learns from its first heartbeat which tasks it lost."""
    kept, lost = new_task(), new_task()

    async def body(a: Store, b: Store) -> None:
        for task in (kept, lost):
            await a.create_task(task)
        await a.claim(worker="A", limit=2, lease_seconds=30)
        await b.transition(lost.id, CREATED, RECOVERING, worker="B", fields={"owner": "B"})
        assert await a.heartbeat("A", lease_seconds=30) == {lost.id}
        await a.transition(kept.id, CREATED, RUNNING, worker="A")  # still A's

    with_two_stores(database, body)


def test_an_expired_lease_makes_an_orphan_on_any_host(database: Database,
                                                      new_task: Any) -> None:
    """A task whose owner (on another host: no pid to check) stopped heartbeating is an
    orphan once its lease passes, not before; a worker that is only late keeps writing."""
    expired, alive = new_task(), new_task()

    async def body(a: Store, b: Store) -> None:
        for task in (expired, alive):
            await a.create_task(task)
        await a.claim(worker="elsewhere:1:a", lease_seconds=0.01)
        await a.claim(worker="elsewhere:2:b", lease_seconds=60)
        for task in (expired, alive):
            await a.transition(task.id, CREATED, RUNNING)
        await anyio.sleep(0.05)
        orphans = await find_orphans(b)
        assert [t.id for t in orphans.tasks] == [expired.id]
        # Nobody took it over yet: the late owner still holds it and may write.
        await a.transition(expired.id, RUNNING, TaskState.IDLE)

    with_two_stores(database, body)
