"""Retention on a real SQLite file: each rule, keep_last, running tasks, chunks, space, CLI."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from config import load_settings
from durable import migrate
from durable.engine import ConnectionOptions, create_engine
from durable.persistence import PersistenceManager
from durable.records import LogFragment, NewTask, ProcessHandle, StepCheckpoint, Stream, TaskKind
from durable.retention import (
    AGE,
    TASK_BYTES,
    TOTAL_BYTES,
    PruneReport,
    RetentionPolicy,
    RuleCount,
    prune,
)
from durable.states import TaskState
from tests.support import oneshot_script

T = TypeVar("T")
DAY = 86400.0
LATER = 40 * DAY  # `now` for prune: every finished task is 40 days old
CHILD_TABLES = ("task_states", "log_fragments", "step_checkpoints", "process_handles")
_clock = [1_000_000.0]


def options(path: Path) -> ConnectionOptions:
    return ConnectionOptions(url=f"sqlite+aiosqlite:///{path}", synchronous="NORMAL")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "oneshot.db"


def with_store(path: Path, body: Callable[[PersistenceManager], Awaitable[T]]) -> T:
    async def main() -> T:
        async with PersistenceManager(options(path)) as store:
            return await body(store)

    return anyio.run(main)


async def add_task(store: PersistenceManager, chunks: Sequence[bytes], *,
                   state: TaskState = TaskState.COMPLETED) -> str:
    """A command task with output ``chunks`` (one fragment each), a step and a process handle,
    left in ``state``."""
    task_id = uuid.uuid4().hex
    await store.create_task(NewTask(id=task_id, kind=TaskKind.COMMAND, argv=["true"]))
    fragments = []
    for seq, data in enumerate(chunks):
        _clock[0] += 1
        fragments.append(LogFragment(task_id, Stream(1 + seq % 2), seq, _clock[0], data))
    await store.append_logs(fragments)
    await store.save_step(StepCheckpoint(task_id, 0, "step", "completed", 1.0, 2.0))
    await store.save_process(ProcessHandle(task_id, 1, "/tmp/run", "host"))
    if state is not TaskState.CREATED:
        await store.transition(task_id, TaskState.CREATED, TaskState.RUNNING)
    if state.is_terminal or state in (TaskState.IDLE, TaskState.RECOVERING):
        fields = {"finished_at": time.time(), "exit_code": 0} if state.is_terminal else {}
        await store.transition(task_id, TaskState.RUNNING, state, fields=fields)
    return task_id


def policy(**kwargs: Any) -> RetentionPolicy:
    return RetentionPolicy(**{"keep_last": 0, **kwargs})


async def run_prune(store: PersistenceManager, rules: RetentionPolicy, **kwargs: Any
                    ) -> PruneReport:
    return await prune(store, rules, now=time.time() + LATER, **kwargs)


def query(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def task_ids(path: Path) -> set[str]:
    return {row[0] for row in query(path, "SELECT id FROM tasks")}


def output(path: Path, task_id: str) -> bytes:
    rows = query(path, "SELECT data FROM log_fragments WHERE task_id = ? ORDER BY seq", (task_id,))
    return b"".join(row[0] for row in rows)


def dropped(path: Path, task_id: str) -> int:
    return int(query(path, "SELECT log_dropped_bytes FROM tasks WHERE id = ?", (task_id,))[0][0])


def assert_no_orphans(path: Path, deleted: Sequence[str] = ()) -> None:
    assert query(path, "PRAGMA foreign_key_check") == []
    for table in CHILD_TABLES:
        assert query(path, f"SELECT count(*) FROM {table} WHERE task_id NOT IN "
                           "(SELECT id FROM tasks)") == [(0,)]
        for task_id in deleted:
            assert query(path, f"SELECT count(*) FROM {table} WHERE task_id = ?",
                         (task_id,)) == [(0,)]


def test_age_rule_deletes_old_finished_tasks_with_every_child_row(db: Path) -> None:
    """Finished tasks past max_age go whole (history, output, steps, handle); others stay."""

    async def body(store: PersistenceManager) -> tuple[list[str], str, PruneReport]:
        old = [await add_task(store, [b"x" * 10, b"y" * 20], state=state)
               for state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.INTERRUPTED)]
        running = await add_task(store, [b"r" * 5], state=TaskState.RUNNING)
        return old, running, await run_prune(store, policy(max_age=DAY))

    old, running, report = with_store(db, body)
    assert task_ids(db) == {running}
    assert report.rules[AGE] == RuleCount(tasks=3, fragments=6, bytes=90)
    assert report.tasks_deleted == 3 and report.bytes_freed == 90
    assert_no_orphans(db, old)


def test_age_rule_spares_recently_finished_tasks(db: Path) -> None:
    """A task that finished within max_age is kept."""

    async def body(store: PersistenceManager) -> PruneReport:
        await add_task(store, [b"x"])
        return await prune(store, policy(max_age=DAY))

    assert with_store(db, body).tasks_deleted == 0
    assert len(task_ids(db)) == 1


def test_keep_last_protects_the_newest_finished_tasks(db: Path) -> None:
    """The newest keep_last finished tasks survive the age rule; unfinished ones do not count."""

    async def body(store: PersistenceManager) -> tuple[list[str], str]:
        ids = [await add_task(store, [b"x" * 10]) for _ in range(5)]
        running = await add_task(store, [b"r"], state=TaskState.RUNNING)
        await run_prune(store, policy(max_age=DAY, keep_last=2))
        return ids, running

    ids, running = with_store(db, body)
    assert task_ids(db) == {*ids[-2:], running}
    assert_no_orphans(db, ids[:3])


def test_per_task_limit_keeps_the_newest_output_and_marks_the_truncation(db: Path) -> None:
    """Over max_bytes_per_task, the oldest bytes go (the boundary fragment is cut) and the
    task's log_dropped_bytes says how many."""
    chunks = [b"a" * 100, b"b" * 100, b"c" * 100]

    async def body(store: PersistenceManager) -> tuple[str, str, PruneReport]:
        finished = await add_task(store, chunks)
        running = await add_task(store, chunks, state=TaskState.IDLE)
        report = await prune(store, policy(max_bytes_per_task=150))
        record = await store.get_task(finished)
        assert record.log_dropped_bytes == 150
        return finished, running, report

    finished, running, report = with_store(db, body)
    assert output(db, finished) == b"".join(chunks)[-150:]
    assert dropped(db, finished) == 150
    assert output(db, running) == b"".join(chunks) and dropped(db, running) == 0
    assert report.rules[TASK_BYTES] == RuleCount(truncated=1, fragments=1, bytes=150)
    assert report.tasks_deleted == 0


def test_total_limit_drops_the_oldest_output_of_finished_unprotected_tasks(db: Path) -> None:
    """Over max_total_bytes, whole fragments go oldest first across finished tasks, never from
    a running task or one of the newest keep_last."""

    async def body(store: PersistenceManager) -> list[str]:
        first = await add_task(store, [b"1" * 100, b"1" * 100])
        running = await add_task(store, [b"r" * 100, b"r" * 100], state=TaskState.RUNNING)
        second = await add_task(store, [b"2" * 100, b"2" * 100])
        third = await add_task(store, [b"3" * 100, b"3" * 100])
        newest = await add_task(store, [b"4" * 100, b"4" * 100])
        report = await prune(store, policy(max_total_bytes=650, keep_last=1))
        assert report.rules[TOTAL_BYTES] == RuleCount(truncated=2, fragments=4, bytes=400)
        return [first, running, second, third, newest]

    first, running, second, third, newest = with_store(db, body)
    assert output(db, first) == b"" and dropped(db, first) == 200
    assert output(db, second) == b"" and dropped(db, second) == 200
    for kept in (running, third, newest):
        assert len(output(db, kept)) == 200 and dropped(db, kept) == 0
    assert len(task_ids(db)) == 5


def test_unfinished_tasks_are_never_pruned_or_truncated(db: Path) -> None:
    """Created, running, idle and recovering tasks keep everything under the harshest policy."""
    states = (TaskState.CREATED, TaskState.RUNNING, TaskState.IDLE, TaskState.RECOVERING)

    async def body(store: PersistenceManager) -> PruneReport:
        for state in states:
            await add_task(store, [b"z" * 50, b"z" * 50], state=state)
        harsh = policy(max_age=1.0, max_bytes_per_task=1, max_total_bytes=1)
        return await run_prune(store, harsh)

    report = with_store(db, body)
    assert report.tasks_deleted == report.fragments_deleted == report.bytes_freed == 0
    assert query(db, "SELECT count(*), sum(length(data)) FROM log_fragments") == [(8, 400)]
    assert query(db, "SELECT sum(log_dropped_bytes) FROM tasks") == [(0,)]


def build_mixed_history(store: PersistenceManager) -> Awaitable[None]:
    async def build() -> None:
        for n in range(6):
            await add_task(store, [bytes([65 + n]) * 70] * (n + 1))
        await add_task(store, [b"r" * 90] * 3, state=TaskState.RUNNING)
        for n in range(4):  # the newest, finished within max_age
            _clock[0] += 1
            await add_task(store, [b"n" * 60] * (n + 2))

    return build()


MIXED = dict(max_age=DAY, max_bytes_per_task=150, max_total_bytes=500, keep_last=2,
             chunk_rows=3)


def test_dry_run_deletes_nothing_and_reports_what_the_real_run_deletes(db: Path) -> None:
    """`prune --dry-run` counts per rule equal the real run's, and the database is untouched."""

    async def body(store: PersistenceManager) -> tuple[PruneReport, PruneReport, PruneReport]:
        await build_mixed_history(store)
        # Age the first six tasks only: the others finished "now" (two days after them).
        await store.writer.submit(_Shift())
        rules = policy(**MIXED)
        dry = await prune(store, rules, dry_run=True)
        again = await prune(store, rules, dry_run=True)
        real = await prune(store, rules)
        return dry, again, real

    dry, again, real = with_store(db, body)
    assert dry.rules == again.rules == real.rules
    assert dry.rules[AGE].tasks > 0 and dry.rules[TASK_BYTES].bytes > 0
    assert dry.rules[TOTAL_BYTES].bytes > 0
    assert dry.chunks == 0 and real.chunks > 3
    assert_no_orphans(db)


class _Shift:
    """Moves the first six tasks' finish two days back (run by the writer, like a chunk)."""

    def apply(self, cur: sqlite3.Cursor) -> None:
        cur.execute("UPDATE tasks SET finished_at = finished_at - 2 * 86400 WHERE id IN ("
                    "SELECT id FROM tasks ORDER BY created_at LIMIT 6)")


def test_dry_run_leaves_the_database_unchanged(db: Path) -> None:
    """A dry run with every rule on deletes and marks nothing."""

    def snapshot() -> list[Any]:
        return [query(db, "SELECT id, log_dropped_bytes FROM tasks ORDER BY id"),
                query(db, "SELECT task_id, seq, data FROM log_fragments ORDER BY task_id, seq")]

    with_store(db, build_mixed_history)
    before = snapshot()

    async def body(store: PersistenceManager) -> PruneReport:
        return await run_prune(store, policy(**MIXED), dry_run=True)

    report = with_store(db, body)
    assert report.dry_run and report.tasks_deleted > 0
    assert snapshot() == before


def test_prune_deletes_in_chunks_each_its_own_commit(db: Path) -> None:
    """With chunk_rows=2, seven old tasks go in four transactions, each visible when done."""
    seen: list[int] = []

    async def body(store: PersistenceManager) -> tuple[PruneReport, int]:
        for _ in range(7):
            await add_task(store, [b"q" * 10])
        commits = store.writer.commits
        report = await run_prune(store, policy(max_age=DAY, chunk_rows=2), release_space=False,
                                 on_chunk=lambda _: seen.append(len(task_ids(db))))
        return report, store.writer.commits - commits

    report, commits = with_store(db, body)
    assert report.chunks == commits == 4
    assert seen == [5, 3, 1, 0]
    assert report.longest_chunk > 0


def test_a_task_with_more_output_than_a_chunk_is_deleted_in_pieces(db: Path) -> None:
    """An old task with ten fragments and chunk_rows=3 loses its output in pieces, then goes."""

    async def body(store: PersistenceManager) -> PruneReport:
        await add_task(store, [b"p" * 10] * 10)
        return await run_prune(store, policy(max_age=DAY, chunk_rows=3), release_space=False)

    report = with_store(db, body)
    assert report.rules[AGE] == RuleCount(tasks=1, fragments=10, bytes=100)
    assert report.chunks == 4
    assert task_ids(db) == set()
    assert_no_orphans(db)


class Interrupt(Exception):
    pass


def test_an_interrupted_prune_leaves_whole_chunks_and_no_orphans(db: Path) -> None:
    """Stopping after the first chunk leaves that chunk committed, the rest intact, no orphans,
    and every truncation marker equal to what is missing."""

    def stop(report: PruneReport) -> None:
        raise Interrupt

    async def body(store: PersistenceManager) -> tuple[list[str], str]:
        old = [await add_task(store, [b"o" * 10] * 2) for _ in range(4)]
        big = await add_task(store, [b"b" * 10] * 9)
        with pytest.raises(Interrupt):
            await run_prune(store, policy(max_age=DAY, chunk_rows=4), on_chunk=stop)
        with pytest.raises(Interrupt):
            await prune(store, policy(max_bytes_per_task=15, chunk_rows=4), on_chunk=stop)
        return old, big

    old, big = with_store(db, body)
    assert task_ids(db) == {*old[2:], big}  # first chunk: two tasks of two fragments
    assert_no_orphans(db, old[:2])
    assert len(output(db, big)) + dropped(db, big) == 90
    assert dropped(db, big) == 40  # four fragments, the chunk's budget


def test_prune_and_vacuum_shrink_the_file(db: Path) -> None:
    """A new (small) database is rewritten with incremental auto-vacuum by its first prune;
    later prunes hand free pages back at once."""
    blob = os.urandom(64 * 1024)

    def pages() -> tuple[int, int, int]:
        return (query(db, "PRAGMA page_count")[0][0], query(db, "PRAGMA freelist_count")[0][0],
                query(db, "PRAGMA auto_vacuum")[0][0])

    async def fill(store: PersistenceManager) -> None:
        for _ in range(8):
            await add_task(store, [blob] * 4)

    async def prune_all(store: PersistenceManager) -> PruneReport:
        return await run_prune(store, policy(max_age=DAY))

    with_store(db, fill)
    full, _, mode = pages()
    assert mode == 0
    first = with_store(db, prune_all)
    after_first = pages()
    assert first.space == "vacuumed" and first.bytes_freed == 8 * 4 * len(blob)
    assert after_first[0] < full / 4 and after_first[1:] == (0, 2)

    with_store(db, fill)
    refilled, _, _ = pages()
    second = with_store(db, prune_all)
    shrunk, free, mode = pages()
    assert second.space == "incremental" and second.pages_released > 0
    assert (free, mode) == (0, 2) and shrunk < refilled / 4


def oneshot(db: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([oneshot_script(), *args], capture_output=True, text=True,
                          timeout=30, env=cli_env(db, env), check=False)



def cli_env(db: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "ONESHOT_DATABASE__URL": str(db), **(extra or {})}


def age_everything(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("UPDATE tasks SET finished_at = finished_at - ?", (LATER,))
    finally:
        conn.close()


def test_prune_command_dry_run_then_real_run(db: Path) -> None:
    """`oneshot prune --dry-run` shows the counts and keeps everything; `oneshot prune` then
    deletes exactly that."""

    async def body(store: PersistenceManager) -> None:
        for _ in range(3):
            await add_task(store, [b"d" * 40, b"e" * 60])

    with_store(db, body)
    age_everything(db)
    env = {"ONESHOT_RETENTION__KEEP_LAST": "1"}
    dry = oneshot(db, "prune", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would delete (dry run)" in dry.stdout
    assert dry.stdout.splitlines()[2].split() == ["max_age", "30", "days", "2", "0", "4", "200"]
    assert "dry run: nothing was deleted" in dry.stderr
    assert len(task_ids(db)) == 3
    real = oneshot(db, "prune", env=env)
    assert real.returncode == 0, real.stderr
    assert "pruned 2 tasks, 4 fragments, 200 bytes" in real.stderr
    assert len(task_ids(db)) == 1
    assert_no_orphans(db)


def test_logs_says_how_much_older_output_was_dropped(db: Path) -> None:
    """After truncation `oneshot logs` prints the newest output and a note on stderr."""

    async def body(store: PersistenceManager) -> str:
        task_id = await add_task(store, [b"old line\n" * 10, b"old\n", b"new line\n"])
        await prune(store, policy(max_bytes_per_task=9))
        return task_id

    task_id = with_store(db, body)
    shown = oneshot(db, "logs", task_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "new line\n"
    assert shown.stderr.splitlines()[0] == (
        "oneshot: 94 bytes of older output were dropped by retention")


def test_db_vacuum_command_turns_on_incremental_auto_vacuum_and_shrinks(db: Path) -> None:
    """`oneshot db vacuum` rewrites the file without its free pages."""

    async def body(store: PersistenceManager) -> None:
        ids = [await add_task(store, [os.urandom(32 * 1024)] * 4) for _ in range(8)]
        await store.writer.submit(_DeleteAll(ids))

    with_store(db, body)
    before = query(db, "PRAGMA page_count")[0][0]
    done = oneshot(db, "db", "vacuum")
    assert done.returncode == 0, done.stderr
    assert "vacuumed" in done.stderr
    assert query(db, "PRAGMA page_count")[0][0] < before / 4
    assert query(db, "PRAGMA auto_vacuum") == [(2,)]
    assert oneshot(db, "db", "check").returncode == 0


class _DeleteAll:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def apply(self, cur: sqlite3.Cursor) -> None:
        cur.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in self.ids])


def test_db_vacuum_without_a_database_fails_cleanly(tmp_path: Path) -> None:
    """Vacuuming a database that does not exist says so and creates nothing."""
    missing = tmp_path / "none.db"
    done = oneshot(missing, "db", "vacuum")
    assert done.returncode == 1
    assert "no database at" in done.stderr and not missing.exists()


def test_worker_prunes_periodically(db: Path) -> None:
    """`oneshot worker` runs the prune every retention.interval seconds."""

    async def body(store: PersistenceManager) -> None:
        for _ in range(3):
            await add_task(store, [b"w" * 10])

    with_store(db, body)
    age_everything(db)
    env = {"ONESHOT_RETENTION__INTERVAL": "0.2", "ONESHOT_RETENTION__KEEP_LAST": "0",
           "ONESHOT_RECOVERY__ON_STARTUP": "false"}
    worker = subprocess.Popen([oneshot_script(), "worker"], env=cli_env(db, env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while task_ids(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert task_ids(db) == set()
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    assert "pruned 3 tasks" in err
    assert_no_orphans(db)


def test_retention_settings_reach_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONESHOT_RETENTION__* variables become the policy prune applies."""
    monkeypatch.setenv("ONESHOT_RETENTION__MAX_AGE_DAYS", "2")
    monkeypatch.setenv("ONESHOT_RETENTION__MAX_TOTAL_BYTES", "1000")
    monkeypatch.setenv("ONESHOT_RETENTION__CHUNK_ROWS", "7")
    settings = load_settings()
    assert RetentionPolicy.from_settings(settings.retention) == RetentionPolicy(
        max_age=2 * DAY, max_bytes_per_task=None, max_total_bytes=1000, keep_last=100,
        chunk_rows=7, chunk_bytes=settings.retention.chunk_bytes)
    assert settings.retention.interval == 3600


def test_migration_0003_round_trip_keeps_rows(db: Path) -> None:
    """Upgrading 0002 -> 0003 adds the marker (0 for existing tasks) and the index; going back
    removes them and keeps every row."""

    async def main() -> None:
        engine = create_engine(options(db))
        try:
            await migrate.upgrade(engine, "0002")
            await insert_task_0002(engine)
            await migrate.upgrade(engine, "0003")
            assert query(db, "SELECT log_dropped_bytes FROM tasks") == [(0,)]
            assert ("ix_tasks_finished_at",) in query(
                db, "SELECT name FROM sqlite_master WHERE type = 'index'")
            await migrate.downgrade(engine, "0002")
            columns = {row[1] for row in query(db, "PRAGMA table_info(tasks)")}
            assert "log_dropped_bytes" not in columns
            assert query(db, "SELECT count(*) FROM log_fragments") == [(1,)]
            await migrate.upgrade(engine)
            assert await migrate.current_revision(engine) == migrate.HEAD == "0003"
        finally:
            await engine.dispose()

    anyio.run(main)
    assert_no_orphans(db)


async def insert_task_0002(engine: Any) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO tasks (id, kind, state, created_at, updated_at)"
            " VALUES ('t1', 'command', 'COMPLETED', 1.0, 1.0)")
        await conn.exec_driver_sql(
            "INSERT INTO log_fragments (task_id, seq, stream, at, data)"
            " VALUES ('t1', 0, 1, 1.0, x'00ff')")
