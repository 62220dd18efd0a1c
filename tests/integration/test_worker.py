"""The worker loop and lease handling inside one process, on each SQL engine.

Queued commands and workflows (``enqueue``) are claimed and run by ``run_worker``; a task that
another worker takes over is let go of at once — its process is left running for the new owner
and this orchestrator writes nothing more for it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import pytest

from config import OneshotSettings, load_settings
from durable import durable, workflow
from durable.records import NewTask, TaskKind
from durable.states import TaskState
from durable.store import Store
from orchestrator.orchestrator import AsyncOrchestrator, new_task_id
from orchestrator.task import LetGo
from orchestrator.worker import WorkerOptions, run_worker
from tests.support import Database, make_store, orchestrate, persisted_only

pytestmark = persisted_only


@durable(name="test_worker.double")
async def double(value: int) -> int:
    return value * 2


@workflow(name="test_worker.twice_doubled")
async def twice_doubled(value: int) -> int:
    return await double(await double(value))


async def all_ended(store: Store, task_ids: list[str]) -> bool:
    return all([(await store.get_task(t)).state.is_terminal for t in task_ids])


def settings_for(database: Database, **overrides: Any) -> OneshotSettings:
    return load_settings(overrides={**database.overrides(), "logs.flush_interval": 0.05,
                                    "concurrency": 2, **overrides})


def test_a_worker_runs_what_was_queued_on_its_queues_and_stops_when_told(
        database: Database) -> None:
    """enqueue / enqueue_to queue workflows without running them; the worker claims those of
    its queues (within its concurrency), runs them to the end, and drains when stopped."""

    async def body(orch: AsyncOrchestrator) -> Any:
        queued = [await orch.enqueue(twice_doubled, n) for n in range(4)]
        other = await orch.enqueue_to("gpu", twice_doubled, 10)
        for task_id in [*queued, other]:
            record = await orch.store.get_task(task_id)
            assert (record.state, record.owner) == (TaskState.CREATED, None)
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            claimed: list[int] = []

            async def work() -> None:
                claimed.append(await run_worker(orch, stop, WorkerOptions(queues=("default",))))

            group.start_soon(work)
            while not await all_ended(orch.store, queued):
                await anyio.sleep(0.05)
            stop.set()
        results = [(await orch.store.get_task(t)).result for t in queued]
        [status] = await orch.store.list_workers(include_stopped=True)
        return claimed, results, (await orch.store.get_task(other)).state, status

    claimed, results, other_state, status = orchestrate(settings_for(database), body)
    assert claimed == [4]
    assert results == ["0", "4", "8", "12"]
    assert other_state is TaskState.CREATED
    assert (status.worker.state, status.finished, status.running) == ("stopped", 4, 0)


def test_a_task_taken_over_by_another_worker_is_let_go_with_its_process_running(
        database: Database) -> None:
    """Another store takes the running command over (as after a missed lease): this
    orchestrator's next write fails the fence, it stops following the task without killing
    the command or writing anything more, and carries on with other work."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sh", "-c", "echo $$; while :; do echo tick; sleep 0.05;"
                                    " done"])
        while not await orch.store.read_logs(handle.id):
            await anyio.sleep(0.02)
        other = make_store(database)
        await other.open()
        try:
            before = await other.get_task(handle.id)
            await other.transition(handle.id, before.state, TaskState.RECOVERING,
                                   worker="other", fields={"owner": "other"})
            outcome = await handle.outcome()
            after = await other.get_task(handle.id)
            history = await other.history(handle.id)
            pid = int((await other.read_logs(handle.id))[0].data.split()[0])
        finally:
            await other.close()
        alive = _alive(pid)
        os.kill(pid, 9)
        next_one = await orch.run(["true"])
        return outcome, after, history, alive, next_one

    outcome, after, history, alive, next_one = orchestrate(settings_for(database), body)
    assert (outcome.state, outcome.error) == (TaskState.RUNNING, LetGo.LEASE_LOST.value)
    assert (after.state, after.owner) == (TaskState.RECOVERING, "other")
    assert history[-1].worker == "other"
    assert alive
    assert next_one.state is TaskState.COMPLETED


def test_a_worker_stalled_past_its_lease_before_the_launch_starts_nothing(
        database: Database, tmp_path: Any) -> None:
    """Between the RUNNING commit and the launch, the orchestrator's leases are no longer
    sure (it stalled past most of a lease: a SIGSTOP, a starved CPU; stood in for here by
    backdating its last confirmed heartbeat). It launches nothing and releases the task, which
    a takeover then runs once."""
    marks = tmp_path / "marks"

    async def body(orch: AsyncOrchestrator) -> Any:
        orch._leases_confirmed_at = time.time() - orch.lease_seconds
        handle = await orch.submit(["sh", "-c", f"echo ran >> {marks}"])
        outcome = await handle.outcome()
        released = await orch.store.get_task(handle.id)
        ran_before = marks.exists()
        orch._leases_confirmed_at = time.time()
        [taken_over] = await orch.recover()
        return outcome, released, ran_before, await taken_over.outcome()

    outcome, released, ran_before, final = orchestrate(settings_for(database), body)
    assert (outcome.state, outcome.error) == (TaskState.RUNNING, LetGo.LEASE_LOST.value)
    assert (released.state, released.owner) == (TaskState.RUNNING, None)
    assert not ran_before
    assert final.state is TaskState.COMPLETED
    assert marks.read_text() == "ran\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_queued_command_claimed_twice_at_once_runs_once(database: Database,
                                                          tmp_path: Any) -> None:
    """Two orchestrators (as two workers) work one queue at the same time: every command runs
    exactly once."""
    marks = tmp_path / "marks"

    async def queue_commands() -> list[str]:
        store = make_store(database)
        await store.open()
        try:
            ids = []
            for i in range(20):
                task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, cwd=str(tmp_path),
                               argv=["sh", "-c", f"echo {i} >> {marks}"])
                ids.append((await store.create_task(task)).id)
            return ids
        finally:
            await store.close()

    ids = anyio.run(queue_commands)

    async def two_workers() -> None:
        stop = anyio.Event()
        async with AsyncOrchestrator(settings_for(database)) as first, \
                AsyncOrchestrator(settings_for(database)) as second, \
                anyio.create_task_group() as group:
            for orch in (first, second):
                group.start_soon(run_worker, orch, stop)
            deadline = time.monotonic() + 30
            while not await all_ended(first.store, ids):
                assert time.monotonic() < deadline
                await anyio.sleep(0.05)
            stop.set()

    anyio.run(two_workers)
    assert sorted(int(line) for line in marks.read_text().split()) == list(range(20))


@pytest.fixture(autouse=True)
def _short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONESHOT_WORKER__DRAIN_GRACE", "5")
