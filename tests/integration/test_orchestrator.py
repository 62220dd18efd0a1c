"""AsyncOrchestrator with real subprocesses, against real databases and the in-memory store.

Every behavioural test runs on each store kind of the ``database`` fixture: persistence on (a
SQLite file under ``tmp_path``, a PostgreSQL schema) and off (``MemoryStore``; nothing may
touch disk).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from config import OneshotSettings, load_settings
from durable.persistence import store_from_settings
from durable.records import Stream, Transition
from durable.states import TaskState
from durable.store import Store
from orchestrator.orchestrator import AsyncOrchestrator
from tests.support import Database, orchestrate, persisted_only

IDLE_THRESHOLD = 0.3


@pytest.fixture
def make_settings(database: Database) -> Callable[..., OneshotSettings]:
    """Settings for one test: the test's database, a short idle threshold."""

    def make(**overrides: Any) -> OneshotSettings:
        return load_settings(overrides={
            **database.overrides(),
            "idle_threshold": IDLE_THRESHOLD,
            "logs.flush_interval": 0.05,
            **overrides,
        })

    return make


@pytest.fixture(autouse=True)
def _nothing_on_disk_without_persistence(database: Database) -> Iterator[None]:
    """With persistence off, no database file appears: neither ours nor the default one."""
    yield
    if not database.persisted:
        assert database.sqlite_path is not None and not database.sqlite_path.parent.exists()
        data_home = Path(os.environ["XDG_DATA_HOME"])
        assert not data_home.exists() or not any(data_home.rglob("*"))


async def output(store: Store, task_id: str, stream: Stream | None = None) -> bytes:
    streams = None if stream is None else [stream]
    return b"".join(f.data for f in await store.read_logs(task_id, streams=streams))


def moves(history: list[Transition]) -> list[tuple[str | None, str]]:
    return [(row.from_state.value if row.from_state else None, row.to_state.value)
            for row in history]


async def wait_for_state(store: Store, task_id: str, state: TaskState) -> None:
    while (await store.get_task(task_id)).state is not state:
        await anyio.sleep(0.02)


def test_failing_command_records_history_output_and_exit_code(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """A command that prints on both streams, goes silent and exits 3 ends FAILED with it all."""
    command = ["sh", "-c", "echo out; echo err >&2; sleep 1; exit 3"]

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(command, name="fails")
        result = await handle.result()
        store = orch.store
        return (result, await store.get_task(handle.id), await store.history(handle.id),
                await output(store, handle.id, Stream.STDOUT),
                await output(store, handle.id, Stream.STDERR))

    result, record, history, out, err = orchestrate(make_settings(), body)
    assert (result.state, result.exit_code, result.shell_exit_code) == (TaskState.FAILED, 3, 3)
    assert (record.state, record.exit_code, record.name) == (TaskState.FAILED, 3, "fails")
    assert record.started_at is not None and record.finished_at is not None
    assert (out, err) == (b"out\n", b"err\n")
    assert moves(history) == [(None, "CREATED"), ("CREATED", "RUNNING"), ("RUNNING", "IDLE"),
                              ("IDLE", "FAILED")]
    assert [row.reason for row in history] == [
        "submitted", "starting", f"no output for {IDLE_THRESHOLD:g}s", "exit 3"]
    assert [row.at for row in history] == sorted(row.at for row in history)


def test_task_flips_idle_and_back_to_running_when_output_resumes(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """Silence longer than idle_threshold moves RUNNING->IDLE; new output moves IDLE->RUNNING."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sh", "-c", "echo a; sleep 1; echo b"])
        result = await handle.result()
        return result, await orch.store.history(handle.id), await output(orch.store, handle.id)

    result, history, out = orchestrate(make_settings(), body)
    assert (result.state, result.exit_code) == (TaskState.COMPLETED, 0)
    assert out == b"a\nb\n"
    steps = moves(history)
    assert ("RUNNING", "IDLE") in steps
    assert ("IDLE", "RUNNING") in steps
    assert steps.index(("RUNNING", "IDLE")) < steps.index(("IDLE", "RUNNING"))
    assert steps[-1][1] == "COMPLETED"
    resumed = history[steps.index(("IDLE", "RUNNING"))]
    assert resumed.reason == "output resumed"


def test_binary_output_is_stored_byte_exact_per_stream(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """Every byte value, NULs and invalid UTF-8 included, comes back unchanged on its stream."""
    every_byte = bytes(range(256)) * 3
    script = ("import sys; o = sys.stdout.buffer; e = sys.stderr.buffer; "
              "o.write(bytes(range(256)) * 3); o.flush(); e.write(b'\\xff\\x00\\xfe no newline')")

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit([sys.executable, "-c", script])
        result = await handle.result()
        return (result, await output(orch.store, handle.id, Stream.STDOUT),
                await output(orch.store, handle.id, Stream.STDERR))

    result, out, err = orchestrate(make_settings(), body)
    assert result.state is TaskState.COMPLETED
    assert out == every_byte
    assert err == b"\xff\x00\xfe no newline"


def test_missing_command_fails_with_the_reason_recorded(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """A program that does not exist ends FAILED, no exit code, the reason in error and history."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["oneshot-no-such-program-xyz", "arg"])
        result = await handle.result()
        return result, await orch.store.get_task(handle.id), await orch.store.history(handle.id)

    result, record, history = orchestrate(make_settings(), body)
    assert (result.state, result.exit_code) == (TaskState.FAILED, None)
    assert record.error == "oneshot-no-such-program-xyz: command not found"
    assert moves(history)[-1] == ("RUNNING", "FAILED")
    assert history[-1].reason == record.error


def test_missing_working_directory_fails_with_the_reason_recorded(
        make_settings: Callable[..., OneshotSettings], tmp_path: Path) -> None:
    """A cwd that does not exist fails the task and says so, instead of raising."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sh", "-c", "true"], cwd=str(tmp_path / "gone"))
        return await handle.result()

    result = orchestrate(make_settings(), body)
    assert result.state is TaskState.FAILED
    assert result.error is not None and "working directory not found" in result.error


def test_command_killed_by_a_signal_fails_naming_it(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """A child killed by SIGKILL ends FAILED with exit code -9 and a shell code of 137."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sh", "-c", "kill -KILL $$"])
        result = await handle.result()
        return result, await orch.store.history(handle.id)

    result, history = orchestrate(make_settings(), body)
    assert (result.state, result.exit_code, result.shell_exit_code) == (TaskState.FAILED, -9, 137)
    assert history[-1].reason == "killed by SIGKILL"


def test_cancel_interrupts_a_running_task_with_the_reason(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """cancel() stops the process group and records INTERRUPTED with the caller's reason."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sh", "-c", "echo started; sleep 30"])
        await wait_for_state(orch.store, handle.id, TaskState.RUNNING)
        while not await output(orch.store, handle.id):
            await anyio.sleep(0.02)
        assert orch.cancel(handle.id, "user asked to stop")
        started = time.monotonic()
        result = await handle.result()
        elapsed = time.monotonic() - started
        assert not orch.cancel(handle.id, "again")
        return (result, elapsed, await orch.store.get_task(handle.id),
                await orch.store.history(handle.id), await output(orch.store, handle.id))

    result, elapsed, record, history, out = orchestrate(make_settings(), body)
    assert result.state is TaskState.INTERRUPTED
    assert elapsed < 3.0
    assert (record.state, record.error, record.exit_code) == (
        TaskState.INTERRUPTED, "user asked to stop", -15)
    assert history[-1].to_state is TaskState.INTERRUPTED
    assert history[-1].reason == "user asked to stop"
    assert out == b"started\n"


def test_shutdown_interrupts_every_running_task(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """shutdown(reason) records each running task INTERRUPTED with that reason."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handles = [await orch.submit(["sleep", "30"]) for _ in range(2)]
        for handle in handles:
            await wait_for_state(orch.store, handle.id, TaskState.RUNNING)
        orch.shutdown("orchestrator going away")
        results = [await handle.result() for handle in handles]
        return results, [await orch.store.history(h.id) for h in handles], orch.active

    results, histories, active = orchestrate(make_settings(), body)
    assert [r.state for r in results] == [TaskState.INTERRUPTED] * 2
    assert [h[-1].reason for h in histories] == ["orchestrator going away"] * 2
    assert active == 0


def _processes_with_argument(argument: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv:
            found.append(int(entry.name))
    return found


def test_shutdown_during_launch_leaves_no_process_behind(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """RUNNING is committed before the shim starts (write-ahead); a shutdown landing in that
    window still stops the command once the launch completes, and reaps the launcher."""
    duration = f"{30 + os.getpid() % 1000 / 1000:.3f}"  # a sleep argument unique to this run

    async def body(orch: AsyncOrchestrator) -> Any:
        handle = await orch.submit(["sleep", duration])
        while (await orch.store.get_task(handle.id)).state is not TaskState.RUNNING:
            await anyio.sleep(0.001)
        orch.shutdown("orchestrator going away")
        return await handle.result()

    result = orchestrate(make_settings(), body)
    assert result.state is TaskState.INTERRUPTED
    assert _processes_with_argument(duration) == []


def test_env_and_cwd_reach_the_command_and_tee_sees_every_byte(
        make_settings: Callable[..., OneshotSettings], tmp_path: Path) -> None:
    """The env and cwd given to submit() are the child's; the tee gets what the store gets."""
    teed: list[tuple[Stream, bytes]] = []
    workdir = tmp_path / "work"
    workdir.mkdir()

    async def body(orch: AsyncOrchestrator) -> Any:
        env = {"PATH": os.environ["PATH"], "ONESHOT_TEST_VALUE": "from env"}
        handle = await orch.submit(
            ["sh", "-c", 'printf "%s|%s\\n" "$ONESHOT_TEST_VALUE" "$(pwd)"; echo e >&2'],
            cwd=str(workdir), env=env, tee=lambda s, d: teed.append((s, d)))
        await handle.result()
        return await output(orch.store, handle.id, Stream.STDOUT)

    out = orchestrate(make_settings(), body)
    assert out == f"from env|{workdir}\n".encode()
    assert b"".join(d for s, d in teed if s is Stream.STDOUT) == out
    assert b"".join(d for s, d in teed if s is Stream.STDERR) == b"e\n"


def test_concurrency_limit_is_never_exceeded(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """With concurrency=2, six `sleep 0.3` tasks never overlap more than two at a time."""

    async def body(orch: AsyncOrchestrator) -> Any:
        handles = [await orch.submit(["sleep", "0.3"]) for _ in range(6)]
        results = [await handle.result() for handle in handles]
        return results, [await orch.store.history(h.id) for h in handles]

    results, histories = orchestrate(make_settings(concurrency=2), body)
    assert [r.state for r in results] == [TaskState.COMPLETED] * 6
    events: list[tuple[float, int]] = []
    for history in histories:
        started = next(row.at for row in history if row.to_state is TaskState.RUNNING)
        ended = history[-1].at
        assert history[-1].to_state is TaskState.COMPLETED
        events += [(started, +1), (ended, -1)]
    running = peak = 0
    for _, delta in sorted(events):  # at equal times an end (-1) sorts before a start
        running += delta
        peak = max(peak, running)
    assert peak == 2


@persisted_only
def test_persisted_task_is_readable_after_the_orchestrator_closes(
        make_settings: Callable[..., OneshotSettings]) -> None:
    """With persistence on, a fresh store sees the task, its history and its output."""
    settings = make_settings()

    async def body(orch: AsyncOrchestrator) -> str:
        handle = await orch.submit(["sh", "-c", "echo kept; echo kept-err >&2; exit 4"])
        await handle.result()
        return handle.id

    task_id = orchestrate(settings, body)

    async def reread() -> Any:
        store = store_from_settings(settings)
        await store.open()
        try:
            return (await store.get_task(task_id[:8]), moves(await store.history(task_id)),
                    await output(store, task_id, Stream.STDOUT),
                    await output(store, task_id, Stream.STDERR), await store.log_size(task_id))
        finally:
            await store.close()

    record, history, out, err, (fragments, size) = anyio.run(reread)
    assert (record.id, record.state, record.exit_code) == (task_id, TaskState.FAILED, 4)
    assert history == [(None, "CREATED"), ("CREATED", "RUNNING"), ("RUNNING", "FAILED")]
    assert (out, err) == (b"kept\n", b"kept-err\n")
    assert size == len(out) + len(err) and fragments >= 2
