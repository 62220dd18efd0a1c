"""A worker SIGKILLed while its command runs: the command lives on and is reattached.

The worker runs as the installed ``oneshot`` script against a real SQLite file; after the kill,
``oneshot recover`` (a fresh process) reattaches to the command's shim, stores the rest of its
output and records its real exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from config import OneshotSettings, load_settings
from durable.persistence import store_from_settings
from durable.records import NewTask, TaskKind, TaskRecord, Transition
from durable.states import TaskState
from orchestrator.orchestrator import new_task_id
from tests.support import oneshot_script

TIMEOUT = 30.0



def settings_for(db: Path) -> OneshotSettings:
    return load_settings(overrides={"database.url": str(db)})


def queue_task(db: Path, argv: list[str]) -> str:
    """Queue a command task for a worker, as `run --detach` does."""

    async def queue() -> str:
        store = store_from_settings(settings_for(db))
        await store.open()
        try:
            task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, argv=argv, cwd=str(db.parent))
            return (await store.create_task(task, reason="queued")).id
        finally:
            await store.close()

    return anyio.run(queue)


def read_task(db: Path, task_id: str) -> tuple[TaskRecord, list[Transition]]:
    async def read() -> tuple[TaskRecord, list[Transition]]:
        store = store_from_settings(settings_for(db))
        await store.open()
        try:
            return await store.get_task(task_id), await store.history(task_id)
        finally:
            await store.close()

    return anyio.run(read)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def leftover_pids() -> Iterator[list[int]]:
    """Process groups the killed worker leaves behind (its command); killed at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def test_command_of_a_killed_worker_is_reattached_by_recover(
        tmp_path: Path, leftover_pids: list[int]) -> None:
    """SIGKILL the worker mid-command; `oneshot recover` reattaches and records the real exit."""
    db = tmp_path / "oneshot.db"
    pid_file = tmp_path / "command.pid"
    env = {**os.environ, "ONESHOT_DATABASE__URL": str(db)}
    script = f"echo $$ > {pid_file}; echo started; sleep 2; echo done >&2; exit 7"
    task_id = queue_task(db, ["sh", "-c", script])
    worker = subprocess.Popen([oneshot_script(), "worker"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(),
                 "the command to start")
        leftover_pids.append(int(pid_file.read_text()))
        wait_for(lambda: read_task(db, task_id)[0].state is TaskState.RUNNING, "RUNNING")
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait(timeout=TIMEOUT)
    record, _ = read_task(db, task_id)
    assert record.state is TaskState.RUNNING  # nobody settled it: the worker died

    recover = subprocess.run([oneshot_script(), "recover"], cwd=tmp_path, env=env,
                             capture_output=True, timeout=TIMEOUT, check=False)
    assert recover.returncode == 0, recover.stderr
    assert b"Traceback" not in recover.stderr
    record, history = read_task(db, task_id)
    assert record.state is TaskState.FAILED
    assert record.exit_code == 7
    states = [row.to_state for row in history]
    assert states[-3:] == [TaskState.RECOVERING, TaskState.RUNNING, TaskState.FAILED]
    assert history[-2].reason is not None and "reattached" in history[-2].reason
    logs = subprocess.run([oneshot_script(), "logs", task_id, "--raw"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=TIMEOUT, check=True)
    assert logs.stdout == b"started\ndone\n"
