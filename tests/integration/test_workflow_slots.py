"""A workflow waiting on work it started never holds the slot that work needs.

Every workflow here runs a real command (``run_command``) or starts a child workflow and
waits for it, with more workflows than the concurrency limit allows at once: in process, under
the worker loop, and under a real ``oneshot worker --concurrency 2``; on SQLite and
PostgreSQL. Before slots were given back, 4 workflows at concurrency 2 hung forever; each
test has a hard deadline so that a hang fails instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from config import OneshotSettings, load_settings
from durable.states import TaskState
from orchestrator import AsyncOrchestrator
from orchestrator.worker import WorkerOptions, run_worker
from tests.integration.slots_app import counted, runs_a_command, waits_for_a_child
from tests.support import Database, make_store, oneshot_script, orchestrate, persisted_only

pytestmark = persisted_only

DEADLINE = 60.0
"""Seconds a whole scenario may take; a deadlock fails here instead of hanging."""
HERE = Path(__file__).resolve().parent
COMBINATIONS = [(1, 1), (1, 4), (2, 4), (1, 50), (2, 50)]
"""(concurrency, workflows)"""


def settings_for(database: Database, concurrency: int) -> OneshotSettings:
    return load_settings(overrides={**database.overrides(), "concurrency": concurrency,
                                    "logs.flush_interval": 0.02})


def run_limited(settings: OneshotSettings, body: Any) -> Any:
    """``orchestrate``, failing (not hanging) past DEADLINE."""

    async def bounded(orch: AsyncOrchestrator) -> Any:
        with anyio.fail_after(DEADLINE):
            return await body(orch)

    return orchestrate(settings, bounded)


@pytest.mark.parametrize(("concurrency", "count"), COMBINATIONS)
def test_workflows_running_commands_finish_in_process(database: Database, concurrency: int,
                                                      count: int) -> None:
    """More workflows than slots, each waiting on a command of its own, all complete, and
    never more commands run at once than the limit allows."""

    async def body(orch: AsyncOrchestrator) -> list[int]:
        handles = [await orch.start(runs_a_command, n) for n in range(count)]
        return [await handle.result() for handle in handles]

    assert run_limited(settings_for(database, concurrency), body) == list(range(count))


@pytest.mark.parametrize(("concurrency", "count"), [(1, 4), (2, 50)])
def test_workflows_waiting_for_child_workflows_finish_in_process(
        database: Database, concurrency: int, count: int) -> None:
    """A workflow awaiting a child workflow's result gives its slot to the child."""

    async def body(orch: AsyncOrchestrator) -> list[int]:
        handles = [await orch.start(waits_for_a_child, n) for n in range(count)]
        return [await handle.result() for handle in handles]

    assert run_limited(settings_for(database, concurrency), body) == [
        n * n for n in range(count)]


def test_running_tasks_never_exceed_the_limit(database: Database, tmp_path: Path) -> None:
    """Giving the slot back does not lift the limit: at concurrency 2, at most two of the
    workflows' commands (each counting the others running beside it) run at once."""
    directory = tmp_path / "running"
    directory.mkdir()

    async def body(orch: AsyncOrchestrator) -> None:
        handles = [await orch.start(counted, str(directory)) for _ in range(6)]
        for handle in handles:
            await handle.result()

    run_limited(settings_for(database, 2), body)
    peaks = [int(peak) for peak in Path(f"{directory}.peaks").read_text().split()]
    assert len(peaks) == 6
    assert max(peaks) == 2  # two at once did happen, and never more


@pytest.mark.parametrize(("concurrency", "count"), [(1, 1), (1, 4), (2, 4), (2, 50)])
def test_workflows_running_commands_finish_under_the_worker_loop(
        database: Database, concurrency: int, count: int) -> None:
    """Queued workflows claimed by a worker at its concurrency all complete."""

    async def body(orch: AsyncOrchestrator) -> list[str | None]:
        queued = [await orch.enqueue(runs_a_command, n) for n in range(count)]
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker, orch, stop, WorkerOptions(poll_interval=0.02))
            while not all([(await orch.store.get_task(t)).state.is_terminal for t in queued]):
                await anyio.sleep(0.05)
            stop.set()
        return [(await orch.store.get_task(t)).result for t in queued]

    assert run_limited(settings_for(database, concurrency), body) == [
        str(n) for n in range(count)]


def test_a_real_worker_at_concurrency_2_runs_4_workflows_with_commands(
        database: Database, tmp_path: Path) -> None:
    """`oneshot worker --concurrency 2` with 4 queued workflows that each run a command."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")},
           **database.env(), "PYTHONPATH": str(HERE)}
    submitted = [
        subprocess.run([oneshot_script(), "submit", "--import", "slots_app",
                        "--workflow", "slots.runs_a_command", "--input", f'{{"n": {n}}}'],
                       env=env, capture_output=True, timeout=DEADLINE, check=True)
        .stdout.decode().strip()
        for n in range(4)
    ]
    worker = subprocess.Popen([oneshot_script(), "worker", "--concurrency", "2", "--import",
                               "slots_app"], env=env, stderr=subprocess.PIPE)
    try:
        async def finished() -> list[Any]:
            store = make_store(database)
            await store.open()
            try:
                with anyio.fail_after(DEADLINE):
                    while True:
                        tasks = [await store.get_task(t) for t in submitted]
                        if all(task.state.is_terminal for task in tasks):
                            return [(task.state, task.result) for task in tasks]
                        await anyio.sleep(0.1)
            finally:
                await store.close()

        outcomes = anyio.run(finished)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=DEADLINE)
    assert outcomes == [(TaskState.COMPLETED, str(n)) for n in range(4)]
    assert worker.returncode == 0, err.decode()

