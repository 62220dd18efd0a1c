"""A workflow script written as a README user writes it, and the child processes that run it.

``FLOW`` is the program (no ``name=`` anywhere: its workflows and steps are named after the
module the file is when imported, ``flow.pipeline`` / ``flow.step``). Its steps append a line to
the side-effect file named in the workflow's input each time their body runs, so the file counts
the real executions. ``$FLOW_PAUSE=in-K`` stops the process inside step K's body (after its line
was written, before its checkpoint) with the marker file ``$FLOW_MARKER`` written, to be killed.

    python flow.py                  # open an orchestrator: it resumes the interrupted workflows
    python flow.py start EFFECTS    # ... then also starts ``pipeline`` (three steps, returns 6)
    python flow.py poison EFFECTS   # ... then also starts ``poison`` (its step kills the process)

It prints ``resumed ID``, ``started ID`` and ``ended ID STATE`` lines.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from durable.records import StepCheckpoint, TaskRecord, Transition
from durable.states import TaskState
from durable.store import Store
from tests.support import Database, make_store, oneshot_script

TIMEOUT = 30.0
"""Hard limit of every wait on a child process."""

FLOW = r'''
import os
import signal
import sys
from pathlib import Path

import anyio

from durable import durable, workflow
from orchestrator import AsyncOrchestrator


@durable
async def step(k: int, effects: str) -> int:
    with open(effects, "a") as f:
        f.write(f"step-{k}\n")
    if os.environ.get("FLOW_PAUSE") == f"in-{k}":
        marker = Path(os.environ["FLOW_MARKER"])
        marker.with_suffix(".tmp").write_text("paused")
        marker.with_suffix(".tmp").replace(marker)
        await anyio.sleep(120)
    return k


@workflow
async def pipeline(effects: str) -> int:
    total = 0
    for k in (1, 2, 3):
        total += await step(k, effects)
    return total


@durable
async def die(effects: str) -> None:
    with open(effects, "a") as f:
        f.write("poison\n")
    os.kill(os.getpid(), signal.SIGKILL)


@workflow(max_recovery_attempts=2)
async def poison(effects: str) -> None:
    await die(effects)


async def main() -> None:
    async with AsyncOrchestrator() as orch:  # resumes the interrupted workflows
        handles = list(orch.resumed)
        for handle in handles:
            print("resumed", handle.id, flush=True)
        if len(sys.argv) > 2:
            flow = {"start": pipeline, "poison": poison}[sys.argv[1]]
            started = await orch.start(flow, sys.argv[2])
            print("started", started.id, flush=True)
            handles.append(started)
        for handle in handles:
            outcome = await handle.outcome()
            print("ended", handle.id, outcome.state.value, flush=True)


if __name__ == "__main__":
    anyio.run(main)
'''

Snapshot = tuple[TaskRecord, list[StepCheckpoint], list[Transition]]


def effects_of(path: Path) -> collections.Counter[str]:
    return collections.Counter(path.read_text().splitlines() if path.exists() else [])


def transitions(history: list[Transition]) -> list[tuple[str | None, str]]:
    return [(t.from_state.value if t.from_state else None, t.to_state.value) for t in history]


def lines_with(out: bytes, word: str) -> list[list[str]]:
    """The whitespace-split lines of ``out`` starting with ``word``."""
    return [line.split() for line in out.decode().splitlines() if line.startswith(word)]


class Scripts:
    """Child processes on one test database; every one is killed and reaped at the end."""

    def __init__(self, database: Database, root: Path) -> None:
        self.database = database
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tasks()  # creates and migrates the database before children race for it

    # -- processes ---------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ONESHOT_", "FLOW_", "PYTHON"))}
        env.update(self.database.env())
        env["COLUMNS"] = "250"  # rich tables: one line per task, nothing cut
        env.update(extra)
        return env

    def spawn(self, argv: list[str], *, cwd: Path | None = None, stdout: Any = subprocess.PIPE,
              **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=self.env(**extra), cwd=cwd or self.root,
                                stdout=stdout, stderr=subprocess.PIPE if stdout ==
                                subprocess.PIPE else subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{proc.args} did not end within {TIMEOUT} s:\n"
                        f"{out.decode()}{(err or b'').decode()}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err or b"")

    def run(self, argv: list[str], *, cwd: Path | None = None,
            **extra: str) -> subprocess.CompletedProcess[bytes]:
        return self.finish(self.spawn(argv, cwd=cwd, **extra))

    def oneshot(self, *args: str, cwd: Path | None = None,
                **extra: str) -> subprocess.CompletedProcess[bytes]:
        return self.run([oneshot_script(), *args], cwd=cwd, **extra)

    def python(self, *args: str, cwd: Path | None = None,
               **extra: str) -> subprocess.CompletedProcess[bytes]:
        return self.run([sys.executable, *args], cwd=cwd, **extra)

    def start_and_kill_in_step(self, argv: list[str], k: int, *, cwd: Path | None = None,
                               **extra: str) -> str:
        """Run ``argv`` (a ``start``) until it pauses inside step ``k``; SIGKILL and reap it.
        Returns the id it printed."""
        marker = self.root / f"paused-{len(self.procs)}.marker"
        proc = self.spawn(argv, cwd=cwd, FLOW_PAUSE=f"in-{k}", FLOW_MARKER=str(marker), **extra)
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if proc.poll() is not None:
                done = self.finish(proc)
                pytest.fail(f"{argv} exited {proc.returncode} before pausing:\n"
                            f"{done.stdout.decode()}{done.stderr.decode()}")
            assert time.monotonic() < deadline, f"{argv} never paused in step {k}"
            time.sleep(0.02)
        self.kill(proc)
        out = proc.stdout.read() if proc.stdout else b""
        (started,) = lines_with(out, "started")
        return started[1]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

    # -- the database ------------------------------------------------------------------

    def query(self, read: Callable[[Store], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            store = make_store(self.database)
            await store.open()
            try:
                return await read(store)
            finally:
                await store.close()

        return anyio.run(main)

    def tasks(self) -> dict[str, Snapshot]:
        """Every task by id, with its checkpoints and its history."""

        async def read(store: Store) -> dict[str, Snapshot]:
            return {task.id: (task, await store.load_steps(task.id), await store.history(task.id))
                    for task in await store.list_tasks()}

        result: dict[str, Snapshot] = self.query(read)
        return result

    def task(self, task_id: str) -> Snapshot:
        return self.tasks()[task_id]

    def wait_until(self, what: str, condition: Callable[[], bool],
                   timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)


def write_flow(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FLOW)
    return path


def is_waiting(record: TaskRecord) -> bool:
    return record.state is TaskState.RECOVERING and record.owner is None
