"""Transient database faults on SQLite, injected for real: another process holds the database's
write lock past ``busy_timeout``.

A write that meets it is retried (and logged) until it commits. A fault that outlasts the
retries costs a worker only the task whose write failed: it lets go of the task, leaves its
process running, and takes it over again once its lease has passed, with no output lost.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from config import load_settings
from durable.persistence import PersistenceManager
from durable.records import NewTask, TaskKind
from durable.states import TaskState
from orchestrator.orchestrator import AsyncOrchestrator, new_task_id
from orchestrator.worker import WorkerOptions, run_worker
from tests.support import Database, oneshot_script, orchestrate, sqlite_only

LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
""")


def lock_database(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process takes the write lock for ``seconds``; returns once it holds it."""
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
    locker.stdout.close()
    return locker


def database_file(database: Database) -> Path:
    return Path(database.url.split("///", 1)[1])


@sqlite_only
def test_a_write_waits_out_a_lock_held_past_busy_timeout(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, argv=["true"], cwd="/")

    async def body() -> list[TaskState]:
        store = PersistenceManager(replace(database.options(), busy_timeout_ms=50))
        await store.open()
        try:
            await store.create_task(task)
            locker = lock_database(database_file(database), 1.0)
            try:
                await store.transition(task.id, TaskState.CREATED, TaskState.INTERRUPTED)
            finally:
                locker.wait()
            return [row.to_state for row in await store.history(task.id)]
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="durable.transient"):
        states = anyio.run(body)
    assert states == [TaskState.CREATED, TaskState.INTERRUPTED]
    assert any("database is locked" in r.getMessage() for r in caplog.records), caplog.text


@sqlite_only
def test_a_task_whose_writes_fail_past_the_retries_is_let_go_and_taken_back(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    """The lock outlasts the retries while a command prints: the worker lets go of the task
    (its process keeps printing into the spool), takes it over again once its lease passed,
    and the task completes with every line stored exactly once."""
    settings = load_settings(overrides={
        **database.overrides(), "logs.flush_interval": 0.05, "database.busy_timeout_ms": 50,
        "database.retry_seconds": 0.3, "worker.lease_seconds": 1.0})
    script = "for i in $(seq 1 30); do echo line $i; sleep 0.1; done"

    async def body(orch: AsyncOrchestrator) -> Any:
        record = await orch.store.create_task(NewTask(
            id=new_task_id(), kind=TaskKind.COMMAND, argv=["sh", "-c", script], cwd="/"))
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker, orch, stop, WorkerOptions(poll_interval=0.05))
            while (await orch.store.get_task(record.id)).state is not TaskState.RUNNING:
                await anyio.sleep(0.05)
            await anyio.sleep(0.5)
            locker = await anyio.to_thread.run_sync(lock_database, database_file(database), 2.0)
            await anyio.to_thread.run_sync(locker.wait)
            while not (await orch.store.get_task(record.id)).state.is_terminal:
                await anyio.sleep(0.1)
            stop.set()
        output = b"".join(f.data for f in await orch.store.read_logs(record.id))
        return (await orch.store.get_task(record.id), await orch.store.history(record.id),
                output, orch.worker_id)

    with caplog.at_level(logging.WARNING):
        task, history, output, worker = orchestrate(settings, body)
    assert task.state is TaskState.COMPLETED, history
    assert output == b"".join(f"line {i}\n".encode() for i in range(1, 31))
    assert any("following it failed" in r.getMessage() for r in caplog.records), caplog.text
    retaken = [row for row in history if row.to_state is TaskState.RECOVERING]
    assert [row.worker for row in retaken] == [worker], history


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB filesystem of its own (tmpfs) for the database; grown with :func:`grow`."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small filesystem: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def grow(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def test_a_full_disk_holds_writes_back_until_space_returns(
        small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The database's disk fills while a command prints 4 MiB: the command keeps running and
    spooling (the spool is on another disk), the writes are retried and logged, and once the
    disk grows every byte and transition is committed."""
    settings = load_settings(overrides={
        "database.url": f"sqlite+aiosqlite:///{small_disk / 'oneshot.db'}",
        "spool_dir": str(tmp_path / "spool"), "logs.flush_interval": 0.05,
        "database.retry_seconds": 60.0})
    line = "x" * 1023
    script = f"for i in $(seq 1 4096); do echo {line}; done; sleep 1; echo done"

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sh", "-c", script])
        while not any("database or disk is full" in r.getMessage() for r in caplog.records):
            await anyio.sleep(0.05)
        grow(small_disk, "64m")
        await handle.outcome()
        output = b"".join(f.data for f in await orch.store.read_logs(handle.id))
        return await orch.store.get_task(handle.id), await orch.store.history(handle.id), output

    with caplog.at_level(logging.WARNING, logger="durable.transient"):
        task, history, output = orchestrate(settings, body)
    assert task.state is TaskState.COMPLETED, history
    assert [row.to_state for row in history] == [
        TaskState.CREATED, TaskState.RUNNING, TaskState.COMPLETED]
    assert output == (line + "\n").encode() * 4096 + b"done\n"


def test_oneshot_run_that_cannot_write_exits_75_and_recover_carries_the_task_on(
        tmp_path: Path) -> None:
    """`oneshot run` whose writes keep failing stops following the task, says so, and exits
    75; the command runs on into its spool, and `oneshot recover` later stores all of it."""
    database = tmp_path / "db" / "oneshot.db"
    env = {**os.environ, "ONESHOT_DATABASE__URL": f"sqlite+aiosqlite:///{database}",
           "ONESHOT_DATABASE__BUSY_TIMEOUT_MS": "50", "ONESHOT_DATABASE__RETRY_SECONDS": "0.3",
           "ONESHOT_WORKER__LEASE_SECONDS": "1", "ONESHOT_LOGS__FLUSH_INTERVAL": "0.05"}
    script = "for i in $(seq 1 40); do echo line $i; sleep 0.1; done"
    run = subprocess.Popen([oneshot_script(), "run", "--", "sh", "-c", script], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert run.stdout is not None
    assert run.stdout.readline() == b"line 1\n"
    locker = lock_database(database, 2.0)
    _, stderr = run.communicate(timeout=60)
    locker.wait()
    assert run.returncode == 75, stderr
    assert b"`oneshot recover`" in stderr and b"Traceback" not in stderr
    recovered = subprocess.run([oneshot_script(), "recover"], env=env, capture_output=True,
                               timeout=60)
    assert recovered.returncode == 0, recovered.stderr
    logs = subprocess.run([oneshot_script(), "logs", "--raw", _only_task(env)], env=env,
                          capture_output=True, timeout=60)
    assert logs.stdout == b"".join(f"line {i}\n".encode() for i in range(1, 41))


def _only_task(env: dict[str, str]) -> str:
    listing = subprocess.run([oneshot_script(), "ls", "--json"], env=env, capture_output=True,
                             check=True, timeout=60)
    [task] = json.loads(listing.stdout)
    assert task["state"] == "COMPLETED", task
    return str(task["id"])
