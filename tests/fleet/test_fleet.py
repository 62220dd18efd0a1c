"""A fleet of three `oneshot worker` processes sharing one database, with real kills.

300 short commands and 30 five-step workflows are queued; three workers share them. Mid-run
one worker is SIGKILLed (its tasks are taken over by the others: commands reattached, workflows
resumed from their checkpoints) and another is SIGSTOPped past its lease (the others take its
tasks over; after SIGCONT it writes nothing more for them). Every task completes; every command
ran once; every workflow step's side effect happened once, except a step that was running in a
worker when it was killed or paused.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from durable.records import NewTask, TaskKind, TaskRecord, Transition, WorkerStatus
from durable.states import TaskState
from durable.store import Store
from orchestrator.orchestrator import new_task_id
from tests.support import Database, make_store, oneshot_script, persisted_only

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fleet_app  # noqa: E402

COMMANDS = 300
WORKFLOWS = 30
LEASE_SECONDS = 3
CONCURRENCY = 8
DEADLINE = 180.0


class Fleet:
    """The worker processes, their logs, and reads of the shared database."""

    def __init__(self, database: Database, tmp_path: Path) -> None:
        self.database = database
        self.tmp_path = tmp_path
        self.env = {**os.environ, **database.env(), "PYTHONPATH": str(HERE),
                    "ONESHOT_WORKER__LEASE_SECONDS": str(LEASE_SECONDS),
                    "ONESHOT_WORKER__DRAIN_GRACE": "20",
                    "ONESHOT_CONCURRENCY": str(CONCURRENCY)}
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        with (self.tmp_path / f"worker-{len(self.workers)}.log").open("wb") as log:
            proc = subprocess.Popen([oneshot_script(), "worker", "--import", "fleet_app"],
                                    env=self.env, cwd=self.tmp_path, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp_path / f"worker-{index}.log").read_text(errors="replace")

    def query(self, read: Callable[[Store], object]) -> object:
        async def main() -> object:
            store = make_store(self.database)
            await store.open()
            try:
                return await read(store)  # type: ignore[misc]
            finally:
                await store.close()

        return anyio.run(main)

    def wait(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)


@pytest.fixture
def fleet(database: Database, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(database, tmp_path)
    yield fleet
    for proc in fleet.workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


def queue_everything(fleet: Fleet, effects: Path) -> dict[str, str]:
    """Queue the commands and workflows interleaved; returns task id -> tag."""
    tags: dict[str, str] = {}

    async def queue(store: Store) -> None:
        for i in range(COMMANDS + WORKFLOWS):
            tag = f"t{i:03d}"
            if i % 11 == 10:
                task = NewTask(id=new_task_id(), kind=TaskKind.WORKFLOW, name=tag,
                               workflow=fleet_app.WORKFLOW_NAME, input=fleet_app.five_steps.codec
                               .dump((tag, str(effects)), {}, "input"))
            else:
                script = f'printf "%s\\n" "$0" >> {effects}.commands; sleep 0.2; echo "out $0"'
                task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=tag,
                               argv=["sh", "-c", script, tag], cwd=str(fleet.tmp_path))
            await store.create_task(task, reason="queued")
            tags[task.id] = tag

    fleet.query(queue)
    assert sum(1 for t in tags.values()) == COMMANDS + WORKFLOWS
    return tags


def finished(fleet: Fleet) -> int:
    async def count(store: Store) -> int:
        done = await store.list_tasks(states=[TaskState.COMPLETED, TaskState.FAILED,
                                              TaskState.INTERRUPTED])
        return len(done)

    return fleet.query(count)  # type: ignore[return-value]


def worker_ids(fleet: Fleet) -> dict[int, str]:
    async def read(store: Store) -> list[WorkerStatus]:
        return await store.list_workers(include_stopped=True)

    statuses: list[WorkerStatus] = fleet.query(read)  # type: ignore[assignment]
    return {status.worker.pid: status.worker.id for status in statuses}


def held_by(fleet: Fleet, worker: str) -> set[str]:
    """The unfinished tasks ``worker`` owns now."""

    async def read(store: Store) -> set[str]:
        unfinished = await store.unfinished_tasks()
        return {ref.id for ref in unfinished if ref.owner == worker}

    return fleet.query(read)  # type: ignore[return-value]


def everything(fleet: Fleet, ids: list[str]
               ) -> dict[str, tuple[TaskRecord, list[Transition], bytes]]:
    async def read(store: Store) -> dict[str, tuple[TaskRecord, list[Transition], bytes]]:
        found = {}
        for task_id in ids:
            output = b"".join(f.data for f in await store.read_logs(task_id))
            found[task_id] = (await store.get_task(task_id), await store.history(task_id), output)
        return found

    return fleet.query(read)  # type: ignore[return-value]


def taken_over_from(history: list[Transition], worker: str) -> int | None:
    """Index of the history row where another worker took this task over from ``worker``."""
    for index, row in enumerate(history):
        if row.to_state is TaskState.RECOVERING and (row.reason or "").startswith(
                f"owner {worker} "):
            return index
    return None


@persisted_only
@pytest.mark.slow
def test_three_workers_share_the_queue_through_a_kill_and_a_pause(fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    """All tasks complete exactly once through a SIGKILL (both engines) and a SIGSTOP past
    the lease (PostgreSQL); the paused worker writes nothing for what was taken from it."""
    # On SQLite a worker paused in the middle of a commit holds the database's one write lock:
    # every other writer waits until it resumes, leases or not. Pausing is a PostgreSQL case.
    pausing = fleet.database.kind == "postgres"
    effects = tmp_path / "effects"
    killed, paused, steady = (fleet.start_worker() for _ in range(3))
    fleet.wait("three workers", lambda: len(worker_ids(fleet)) == 3)
    tags = queue_everything(fleet, effects)
    ids = worker_ids(fleet)

    fleet.wait("a fifth of the tasks", lambda: finished(fleet) >= len(tags) // 5)
    killed.kill()
    killed.wait()
    paused_id = ids[paused.pid]
    if pausing:
        fleet.wait("half of the tasks", lambda: finished(fleet) >= len(tags) // 2)
        fleet.wait("the worker to pause to hold tasks", lambda: bool(held_by(fleet, paused_id)))
        paused.send_signal(signal.SIGSTOP)
        held = held_by(fleet, paused_id)
        # Some of it: a task whose row the paused worker holds locked mid-statement cannot be
        # taken over until it resumes (and then finishes it itself, its lease intact).
        fleet.wait("the others to take over some of what it held",  # once its lease passed
                   lambda: bool(held - held_by(fleet, paused_id)))
        time.sleep(LEASE_SECONDS)  # more takeovers while it stays paused
        paused.send_signal(signal.SIGCONT)
    fleet.wait("every task", lambda: finished(fleet) == len(tags))
    for proc in (paused, steady):
        proc.send_signal(signal.SIGTERM)
    for index, proc in ((1, paused), (2, steady)):
        assert proc.wait(timeout=60) == 0, fleet.log(index)

    results = everything(fleet, list(tags))
    states = collections.Counter(record.state for record, _, _ in results.values())
    assert states == {TaskState.COMPLETED: len(tags)}, fleet.log(1)

    # Commands: each ran exactly once and its output is stored exactly once.
    command_runs = collections.Counter(Path(f"{effects}.commands").read_text().split())
    workflow_effects = collections.Counter(effects.read_text().splitlines())
    for task_id, (record, history, output) in results.items():
        tag = tags[task_id]
        if record.kind == TaskKind.COMMAND:
            assert command_runs[tag] == 1, (tag, history)
            assert output == f"out {tag}\n".encode(), (tag, output)
        else:
            assert record.result == str(fleet_app.EXPECTED_RESULT)
            counts = [workflow_effects[f"{tag} {k}"] for k in range(1, 6)]
            takeovers = sum(1 for row in history if row.to_state is TaskState.RECOVERING)
            assert all(1 <= c <= 2 for c in counts), (tag, counts)
            assert sum(c - 1 for c in counts) <= takeovers, (tag, counts, history)

    # The killed worker's tasks were taken over; so were some of the paused one's, and once
    # taken over, the paused worker wrote nothing more for them.
    killed_id = ids[killed.pid]
    assert any(taken_over_from(h, killed_id) is not None for _, h, _ in results.values())
    taken_from_paused = 0
    for _, history, _ in results.values():
        index = taken_over_from(history, paused_id)
        if index is not None:
            taken_from_paused += 1
            # Until someone takes the task over again (it may even be the paused worker,
            # legitimately, once resumed), nothing comes from the paused worker.
            later = history[index + 1:]
            retaken = next((i for i, row in enumerate(later)
                            if row.to_state is TaskState.RECOVERING), len(later))
            assert all(row.worker != paused_id for row in later[:retaken]), [
                (row.worker, row.to_state.value, row.reason, row.at) for row in history]
    assert taken_from_paused > 0 or not pausing, fleet.log(1)
