"""What the fleet tests share: worker processes on one database, queueing, and the checks.

The workload is interleaved short commands and five-step workflows (``fleet_app``), each
leaving a side effect per run in a file, so the tests can count how often each ran.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio

from durable.records import NewTask, TaskKind, TaskRecord, Transition, WorkerStatus
from durable.states import TaskState
from durable.store import Store
from orchestrator.orchestrator import new_task_id
from tests.support import Database, make_store, oneshot_script

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fleet_app  # noqa: E402

COMMANDS = 300
WORKFLOWS = 30
LEASE_SECONDS = 3
CONCURRENCY = 8
DEADLINE = 180.0


FleetT = TypeVar("FleetT", bound="Fleet")


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

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """Start `oneshot worker ARGS` (able to run ``fleet_app``'s workflow), logging to
        ``worker-N.log``."""
        with (self.tmp_path / f"worker-{len(self.workers)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [oneshot_script(), "worker", "--import", "fleet_app", *args], env=self.env,
                cwd=self.tmp_path, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([oneshot_script(), *args], env=self.env, cwd=self.tmp_path,
                              capture_output=True, timeout=DEADLINE, check=False)

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


@contextlib.contextmanager
def reaped(fleet: FleetT) -> Iterator[FleetT]:
    """The fleet, with every worker process killed (even a paused one) and reaped after."""
    try:
        yield fleet
    finally:
        for proc in fleet.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


def queue_everything(fleet: Fleet, effects: Path, commands: int = COMMANDS,
                     workflows: int = WORKFLOWS) -> dict[str, str]:
    """Queue the commands and workflows interleaved (one workflow after every ``commands //
    workflows`` commands); returns task id -> tag. Each command appends its tag to
    ``<effects>.commands`` when it runs; each workflow step appends ``TAG K`` to ``effects``."""
    tags: dict[str, str] = {}
    every = commands // workflows + 1 if workflows else commands + 1

    async def queue(store: Store) -> None:
        for i in range(commands + workflows):
            tag = f"t{i:03d}"
            if i % every == every - 1:
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
    assert len(tags) == commands + workflows
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


def assert_each_ran_once(results: dict[str, tuple[TaskRecord, list[Transition], bytes]],
                         tags: dict[str, str], effects: Path) -> None:
    """Every task completed; every command ran exactly once and its output is stored exactly
    once; every workflow step's side effect happened once, except at most one step per
    takeover (the step that was running in the worker that lost the task)."""
    states = collections.Counter(record.state for record, _, _ in results.values())
    assert states == {TaskState.COMPLETED: len(tags)}
    command_runs = collections.Counter(Path(f"{effects}.commands").read_text().split())
    workflow_effects = collections.Counter(
        effects.read_text().splitlines() if effects.exists() else [])
    for task_id, (record, history, output) in results.items():
        tag = tags[task_id]
        if record.kind == TaskKind.COMMAND:
            assert command_runs[tag] == 1, (tag, history)
            assert output == f"out {tag}\n".encode(), (tag, output, [
                (row.worker, row.to_state.value, row.reason, row.at) for row in history])
        else:
            assert record.result == str(fleet_app.EXPECTED_RESULT)
            counts = [workflow_effects[f"{tag} {k}"] for k in range(1, 6)]
            takeovers = sum(1 for row in history if row.to_state is TaskState.RECOVERING)
            assert all(c >= 1 for c in counts), (tag, counts)
            assert sum(c - 1 for c in counts) <= takeovers, (tag, counts, history)


def stray_processes(fleet: Fleet) -> list[str]:
    """Live processes working for this fleet (commands, shims, workers), as command lines:
    those whose arguments name its directory or its spool (under its data home)."""
    marks = [str(fleet.tmp_path), fleet.env.get("XDG_DATA_HOME") or str(fleet.tmp_path)]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            zombie = (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
        except OSError:
            continue  # ended meanwhile
        if not zombie and any(mark in cmdline for mark in marks):
            found.append(f"{entry.name}: {cmdline}")
    return found


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size so far (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")
