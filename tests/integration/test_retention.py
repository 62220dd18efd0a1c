"""Retention on each SQL engine: each rule, keep_last, running tasks, chunks, concurrent
prunes, space, CLI.

The behaviour tests run on a SQLite file and on a PostgreSQL schema (``persisted_only``); what
only SQLite has (its file shrinking, incremental vacuum) is ``sqlite_only``, what only
PostgreSQL has (concurrent prunes from several workers, VACUUM (ANALYZE)) ``postgres_only``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from config import load_settings
from durable import migrate
from durable.engine import ConnectionOptions, create_engine, create_null_pool_engine
from durable.exceptions import StoreError
from durable.memory import MemoryStore
from durable.records import LogFragment, NewTask, ProcessHandle, StepCheckpoint, Stream, TaskKind
from durable.retention import (
    AGE,
    TASK_BYTES,
    TOTAL_BYTES,
    PruneReport,
    RetentionPolicy,
    RuleCount,
    prune,
    retention_engine,
)
from durable.retention_engine import connection_query
from durable.states import TaskState
from durable.store import Store
from tests.support import (
    PERSISTED,
    Database,
    make_store,
    oneshot_script,
    persisted_only,
    sqlite_only,
)

T = TypeVar("T")
DAY = 86400.0
LATER = 40 * DAY  # `now` for prune: every finished task is 40 days old
CHILD_TABLES = ("task_states", "log_fragments", "step_checkpoints", "process_handles")
_clock = [1_000_000.0]

postgres_only = pytest.mark.parametrize("database", PERSISTED[1:], indirect=True)
"""Run a test using the ``database`` fixture on a PostgreSQL schema only."""


def with_store(database: Database, body: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        store = make_store(database)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return anyio.run(main)


def sql(database: Database, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement (``?`` parameters) on its own connection and commit; its rows.
    Callable from inside an event loop (PostgreSQL: on a thread of its own)."""
    if database.kind == "sqlite":
        conn = sqlite3.connect(database.sqlite_path or "")
        conn.execute("PRAGMA foreign_keys = ON")  # as the store's connections have it
        try:
            with conn:
                return conn.execute(statement, tuple(params)).fetchall()
        finally:
            conn.close()

    async def main() -> list[tuple[Any, ...]]:
        engine = create_null_pool_engine(database.options())
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(lambda c: connection_query(c)(statement, params))
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, main).result()


async def add_task(store: Store, chunks: Sequence[bytes], *,
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


async def run_prune(store: Store, rules: RetentionPolicy, **kwargs: Any) -> PruneReport:
    return await prune(store, rules, now=time.time() + LATER, **kwargs)


def task_ids(database: Database) -> set[str]:
    return {row[0] for row in sql(database, "SELECT id FROM tasks")}


def output(database: Database, task_id: str) -> bytes:
    rows = sql(database, "SELECT data FROM log_fragments WHERE task_id = ? ORDER BY seq",
               (task_id,))
    return b"".join(row[0] for row in rows)


def dropped(database: Database, task_id: str) -> int:
    return int(sql(database, "SELECT log_dropped_bytes FROM tasks WHERE id = ?",
                   (task_id,))[0][0])


def assert_no_orphans(database: Database, deleted: Sequence[str] = ()) -> None:
    if database.kind == "sqlite":  # PostgreSQL enforces foreign keys always
        assert sql(database, "PRAGMA foreign_key_check") == []
    for table in CHILD_TABLES:
        assert sql(database, f"SELECT count(*) FROM {table} WHERE task_id NOT IN "
                             "(SELECT id FROM tasks)") == [(0,)]
        for task_id in deleted:
            assert sql(database, f"SELECT count(*) FROM {table} WHERE task_id = ?",
                       (task_id,)) == [(0,)]


@persisted_only
def test_age_rule_deletes_old_finished_tasks_with_every_child_row(database: Database) -> None:
    """Finished tasks past max_age go whole (history, output, steps, handle); others stay."""

    async def body(store: Store) -> tuple[list[str], str, PruneReport]:
        old = [await add_task(store, [b"x" * 10, b"y" * 20], state=state)
               for state in (TaskState.COMPLETED, TaskState.FAILED, TaskState.INTERRUPTED)]
        running = await add_task(store, [b"r" * 5], state=TaskState.RUNNING)
        return old, running, await run_prune(store, policy(max_age=DAY))

    old, running, report = with_store(database, body)
    assert task_ids(database) == {running}
    assert report.rules[AGE] == RuleCount(tasks=3, fragments=6, bytes=90)
    assert report.tasks_deleted == 3 and report.bytes_freed == 90
    assert_no_orphans(database, old)


@persisted_only
def test_age_rule_spares_recently_finished_tasks(database: Database) -> None:
    """A task that finished within max_age is kept."""

    async def body(store: Store) -> PruneReport:
        await add_task(store, [b"x"])
        return await prune(store, policy(max_age=DAY))

    assert with_store(database, body).tasks_deleted == 0
    assert len(task_ids(database)) == 1


@persisted_only
def test_keep_last_protects_the_newest_finished_tasks(database: Database) -> None:
    """The newest keep_last finished tasks survive the age rule; unfinished ones do not count."""

    async def body(store: Store) -> tuple[list[str], str]:
        ids = [await add_task(store, [b"x" * 10]) for _ in range(5)]
        running = await add_task(store, [b"r"], state=TaskState.RUNNING)
        await run_prune(store, policy(max_age=DAY, keep_last=2))
        return ids, running

    ids, running = with_store(database, body)
    assert task_ids(database) == {*ids[-2:], running}
    assert_no_orphans(database, ids[:3])


@persisted_only
def test_per_task_limit_keeps_the_newest_output_and_marks_the_truncation(
        database: Database) -> None:
    """Over max_bytes_per_task, the oldest bytes go (the boundary fragment is cut) and the
    task's log_dropped_bytes says how many."""
    chunks = [b"a" * 100, b"b" * 100, b"c" * 100]

    async def body(store: Store) -> tuple[str, str, PruneReport]:
        finished = await add_task(store, chunks)
        running = await add_task(store, chunks, state=TaskState.IDLE)
        report = await prune(store, policy(max_bytes_per_task=150))
        record = await store.get_task(finished)
        assert record.log_dropped_bytes == 150
        return finished, running, report

    finished, running, report = with_store(database, body)
    assert output(database, finished) == b"".join(chunks)[-150:]
    assert dropped(database, finished) == 150
    assert output(database, running) == b"".join(chunks) and dropped(database, running) == 0
    assert report.rules[TASK_BYTES] == RuleCount(truncated=1, fragments=1, bytes=150)
    assert report.tasks_deleted == 0


@persisted_only
def test_total_limit_drops_the_oldest_output_of_finished_unprotected_tasks(
        database: Database) -> None:
    """Over max_total_bytes, whole fragments go oldest first across finished tasks, never from
    a running task or one of the newest keep_last."""

    async def body(store: Store) -> list[str]:
        first = await add_task(store, [b"1" * 100, b"1" * 100])
        running = await add_task(store, [b"r" * 100, b"r" * 100], state=TaskState.RUNNING)
        second = await add_task(store, [b"2" * 100, b"2" * 100])
        third = await add_task(store, [b"3" * 100, b"3" * 100])
        newest = await add_task(store, [b"4" * 100, b"4" * 100])
        report = await prune(store, policy(max_total_bytes=650, keep_last=1))
        assert report.rules[TOTAL_BYTES] == RuleCount(truncated=2, fragments=4, bytes=400)
        return [first, running, second, third, newest]

    first, running, second, third, newest = with_store(database, body)
    assert output(database, first) == b"" and dropped(database, first) == 200
    assert output(database, second) == b"" and dropped(database, second) == 200
    for kept in (running, third, newest):
        assert len(output(database, kept)) == 200 and dropped(database, kept) == 0
    assert len(task_ids(database)) == 5


@persisted_only
def test_unfinished_tasks_are_never_pruned_or_truncated(database: Database) -> None:
    """Created, running, idle and recovering tasks keep everything under the harshest policy."""
    states = (TaskState.CREATED, TaskState.RUNNING, TaskState.IDLE, TaskState.RECOVERING)

    async def body(store: Store) -> PruneReport:
        for state in states:
            await add_task(store, [b"z" * 50, b"z" * 50], state=state)
        harsh = policy(max_age=1.0, max_bytes_per_task=1, max_total_bytes=1)
        return await run_prune(store, harsh)

    report = with_store(database, body)
    assert report.tasks_deleted == report.fragments_deleted == report.bytes_freed == 0
    assert sql(database, "SELECT count(*), sum(length(data)) FROM log_fragments") == [(8, 400)]
    assert sql(database, "SELECT sum(log_dropped_bytes) FROM tasks") == [(0,)]


async def build_mixed_history(store: Store) -> None:
    for n in range(6):
        await add_task(store, [bytes([65 + n]) * 70] * (n + 1))
    await add_task(store, [b"r" * 90] * 3, state=TaskState.RUNNING)
    for n in range(4):  # the newest, finished within max_age
        _clock[0] += 1
        await add_task(store, [b"n" * 60] * (n + 2))


MIXED = dict(max_age=DAY, max_bytes_per_task=150, max_total_bytes=500, keep_last=2,
             chunk_rows=3)


def age_first(database: Database, count: int) -> None:
    """Move the first ``count`` tasks' finish two days back (the others finished "now")."""
    sql(database, "UPDATE tasks SET finished_at = finished_at - 2 * 86400 WHERE id IN ("
                  "SELECT id FROM tasks ORDER BY created_at LIMIT ?)", (count,))


@persisted_only
def test_dry_run_deletes_nothing_and_reports_what_the_real_run_deletes(
        database: Database) -> None:
    """`prune --dry-run` counts per rule equal the real run's, and the database is untouched."""
    with_store(database, build_mixed_history)
    age_first(database, 6)

    async def body(store: Store) -> tuple[PruneReport, PruneReport, PruneReport]:
        rules = policy(**MIXED)
        dry = await prune(store, rules, dry_run=True)
        again = await prune(store, rules, dry_run=True)
        real = await prune(store, rules)
        return dry, again, real

    dry, again, real = with_store(database, body)
    assert dry.rules == again.rules == real.rules
    assert dry.rules[AGE].tasks > 0 and dry.rules[TASK_BYTES].bytes > 0
    assert dry.rules[TOTAL_BYTES].bytes > 0
    assert dry.chunks == 0 and real.chunks > 3
    assert_no_orphans(database)


@persisted_only
def test_dry_run_leaves_the_database_unchanged(database: Database) -> None:
    """A dry run with every rule on deletes and marks nothing."""

    def snapshot() -> list[Any]:
        return [sql(database, "SELECT id, log_dropped_bytes FROM tasks ORDER BY id"),
                sql(database, "SELECT task_id, seq, data FROM log_fragments"
                              " ORDER BY task_id, seq")]

    with_store(database, build_mixed_history)
    before = snapshot()

    async def body(store: Store) -> PruneReport:
        return await run_prune(store, policy(**MIXED), dry_run=True)

    report = with_store(database, body)
    assert report.dry_run and report.tasks_deleted > 0
    assert snapshot() == before


@persisted_only
def test_prune_deletes_in_chunks_each_its_own_commit(database: Database) -> None:
    """With chunk_rows=2, seven old tasks go in four transactions, each visible when done."""
    seen: list[int] = []

    async def body(store: Any) -> tuple[PruneReport, int | None]:
        for _ in range(7):
            await add_task(store, [b"q" * 10])
        writer = getattr(store, "writer", None)  # SQLite's group-commit writer counts commits
        commits = writer.commits if writer else 0
        report = await run_prune(store, policy(max_age=DAY, chunk_rows=2), release_space=False,
                                 on_chunk=lambda _: seen.append(len(task_ids(database))))
        return report, writer.commits - commits if writer else None

    report, commits = with_store(database, body)
    assert report.chunks == 4 and commits in (4, None)
    assert seen == [5, 3, 1, 0]
    assert report.longest_chunk > 0


@persisted_only
def test_a_task_with_more_output_than_a_chunk_is_deleted_in_pieces(database: Database) -> None:
    """An old task with ten fragments and chunk_rows=3 loses its output in pieces, then goes."""

    async def body(store: Store) -> PruneReport:
        await add_task(store, [b"p" * 10] * 10)
        return await run_prune(store, policy(max_age=DAY, chunk_rows=3), release_space=False)

    report = with_store(database, body)
    assert report.rules[AGE] == RuleCount(tasks=1, fragments=10, bytes=100)
    assert report.chunks == 4
    assert task_ids(database) == set()
    assert_no_orphans(database)


class Interrupt(Exception):
    pass


@persisted_only
def test_an_interrupted_prune_leaves_whole_chunks_and_no_orphans(database: Database) -> None:
    """Stopping after the first chunk leaves that chunk committed, the rest intact, no orphans,
    and every truncation marker equal to what is missing."""

    def stop(report: PruneReport) -> None:
        raise Interrupt

    async def body(store: Store) -> tuple[list[str], str]:
        old = [await add_task(store, [b"o" * 10] * 2) for _ in range(4)]
        big = await add_task(store, [b"b" * 10] * 9)
        with pytest.raises(Interrupt):
            await run_prune(store, policy(max_age=DAY, chunk_rows=4), on_chunk=stop)
        with pytest.raises(Interrupt):
            await prune(store, policy(max_bytes_per_task=15, chunk_rows=4), on_chunk=stop)
        return old, big

    old, big = with_store(database, body)
    assert task_ids(database) == {*old[2:], big}  # first chunk: two tasks of two fragments
    assert_no_orphans(database, old[:2])
    assert len(output(database, big)) + dropped(database, big) == 90
    assert dropped(database, big) == 40  # four fragments, the chunk's budget


def test_prune_needs_a_sql_store() -> None:
    """A store in memory has nothing to prune: a clear error, not a silent no-op."""
    with pytest.raises(StoreError, match="retention works on a SQL store"):
        retention_engine(MemoryStore())


# -- several workers pruning one database at once ------------------------------------------


@pytest.fixture
def reference(database: Database, request: pytest.FixtureRequest, tmp_path: Path
              ) -> Iterator[Database]:
    """A second database of the same kind, for the same history pruned once."""
    if database.kind == "sqlite":
        yield Database("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'reference.db'}")
        return
    name = f"oneshot_test_{uuid.uuid4().hex[:12]}"
    admin = Database("postgres", database.url)
    sql(admin, f'CREATE SCHEMA "{name}"')
    try:
        yield Database("postgres", database.url, name)
    finally:
        sql(admin, f'DROP SCHEMA "{name}" CASCADE')


async def build_large_history(store: Store) -> None:
    """Old tasks for the age rule (one bigger than a chunk), oversized ones for the per-task
    rule, enough output for the total rule, and unfinished tasks."""
    for n in range(12):
        await add_task(store, [bytes([65 + n % 26]) * (20 + n)] * (1 + n % 4))
    await add_task(store, [b"big" * 10] * 11)
    for n in range(10):
        await add_task(store, [bytes([97 + n]) * 45] * (2 + n % 5))
    await add_task(store, [b"r" * 90] * 4, state=TaskState.RUNNING)
    await add_task(store, [b"i" * 90] * 4, state=TaskState.IDLE)
    for n in range(4):
        await add_task(store, [b"n" * 60] * (n + 2))


def end_state(database: Database) -> list[tuple[Any, ...]]:
    """Every task in creation order: state, truncation marker, stored output."""
    data: dict[str, bytes] = {}
    for task_id, chunk in sql(database, "SELECT task_id, data FROM log_fragments"
                                        " ORDER BY task_id, seq"):
        data[task_id] = data.get(task_id, b"") + bytes(chunk)
    tasks = sql(database, "SELECT id, state, log_dropped_bytes FROM tasks ORDER BY created_at")
    return [(state, marker, data.get(task_id, b"")) for task_id, state, marker in tasks]


def stored(database: Database) -> dict[str, int]:
    """Per task: output stored plus output dropped (which retention keeps constant)."""
    return {task_id: marker + int(size) for task_id, marker, size in sql(
        database, "SELECT t.id, t.log_dropped_bytes, coalesce(sum(length(f.data)), 0)"
                  " FROM tasks AS t LEFT JOIN log_fragments AS f ON f.task_id = t.id"
                  " GROUP BY t.id, t.log_dropped_bytes")}


CONCURRENT = dict(max_age=DAY, max_bytes_per_task=100, max_total_bytes=1200, keep_last=3,
                  chunk_rows=3, chunk_bytes=200)


@persisted_only
def test_concurrent_prunes_end_where_one_prune_does(database: Database,
                                                    reference: Database) -> None:
    """Two workers pruning at once (two stores, their chunks taking turns: PostgreSQL's
    advisory lock, SQLite's write lock) leave exactly the state one prune leaves on the same
    history: nothing deleted twice, no marker counted twice, every marker equal to the output
    missing."""
    for db in (database, reference):
        with_store(db, build_large_history)
        age_first(db, 13)
    original = stored(database)
    rules = policy(**CONCURRENT)
    one = with_store(reference, lambda store: prune(store, rules))

    async def two_workers() -> list[PruneReport]:
        stores = [make_store(database), make_store(database)]
        reports: list[PruneReport] = []
        for store in stores:
            await store.open()
        try:
            async with anyio.create_task_group() as workers:
                for store in stores:
                    async def run(store: Store = store) -> None:
                        reports.append(await prune(store, rules))

                    workers.start_soon(run)
        finally:
            for store in stores:
                await store.close()
        return reports

    first, second = anyio.run(two_workers)
    assert end_state(database) == end_state(reference)
    survivors = stored(database)
    assert survivors and all(original[task_id] == size for task_id, size in survivors.items())
    for rule in (AGE, TASK_BYTES, TOTAL_BYTES):
        counts = first.rules[rule], second.rules[rule]
        assert (sum(c.tasks for c in counts), sum(c.fragments for c in counts),
                sum(c.bytes for c in counts)) == (one.rules[rule].tasks,
                                                  one.rules[rule].fragments,
                                                  one.rules[rule].bytes), rule
        assert one.rules[rule].bytes > 0, rule
    assert first.chunks and second.chunks  # they did take turns
    assert_no_orphans(database)


@postgres_only
def test_prune_on_postgres_leaves_space_to_autovacuum(database: Database) -> None:
    """PostgreSQL gives nothing back at once: the report says autovacuum, 0 bytes released."""

    async def body(store: Store) -> PruneReport:
        await add_task(store, [b"v" * 1000] * 3)
        return await run_prune(store, policy(max_age=DAY))

    report = with_store(database, body)
    assert report.tasks_deleted == 1 and report.bytes_freed == 3000
    assert (report.space, report.bytes_released) == ("autovacuum", 0)


# -- SQLite's file -------------------------------------------------------------------------


def pragma(database: Database, name: str) -> int:
    return int(sql(database, f"PRAGMA {name}")[0][0])


@sqlite_only
def test_prune_and_vacuum_shrink_the_file(database: Database) -> None:
    """A new (small) database is rewritten with incremental auto-vacuum by its first prune;
    later prunes hand free pages back at once."""
    blob = os.urandom(64 * 1024)

    def pages() -> tuple[int, int, int]:
        count, free, mode = (pragma(database, p)
                             for p in ("page_count", "freelist_count", "auto_vacuum"))
        return count, free, mode

    async def fill(store: Store) -> None:
        for _ in range(8):
            await add_task(store, [blob] * 4)

    async def prune_all(store: Store) -> PruneReport:
        return await run_prune(store, policy(max_age=DAY))

    with_store(database, fill)
    full, _, mode = pages()
    assert mode == 0
    first = with_store(database, prune_all)
    after_first = pages()
    assert first.space == "vacuumed" and first.bytes_freed == 8 * 4 * len(blob)
    assert after_first[0] < full / 4 and after_first[1:] == (0, 2)

    with_store(database, fill)
    refilled, _, _ = pages()
    second = with_store(database, prune_all)
    shrunk, free, mode = pages()
    assert second.space == "incremental" and second.pages_released > 0
    assert (free, mode) == (0, 2) and shrunk < refilled / 4


# -- the CLI and the worker -----------------------------------------------------------------


def oneshot(database: Database, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([oneshot_script(), *args], capture_output=True, text=True,
                          timeout=30, env=cli_env(database, env), check=False)


def cli_env(database: Database, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **database.env(), **(extra or {})}


def age_everything(database: Database) -> None:
    sql(database, "UPDATE tasks SET finished_at = finished_at - ?", (LATER,))


@persisted_only
def test_prune_command_dry_run_then_real_run(database: Database) -> None:
    """`oneshot prune --dry-run` shows the counts and keeps everything; `oneshot prune` then
    deletes exactly that."""

    async def body(store: Store) -> None:
        for _ in range(3):
            await add_task(store, [b"d" * 40, b"e" * 60])

    with_store(database, body)
    age_everything(database)
    env = {"ONESHOT_RETENTION__KEEP_LAST": "1"}
    dry = oneshot(database, "prune", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would delete (dry run)" in dry.stdout
    assert dry.stdout.splitlines()[2].split() == ["max_age", "30", "days", "2", "0", "4", "200"]
    assert "dry run: nothing was deleted" in dry.stderr
    assert len(task_ids(database)) == 3
    real = oneshot(database, "prune", env=env)
    assert real.returncode == 0, real.stderr
    assert "pruned 2 tasks, 4 fragments, 200 bytes" in real.stderr
    if database.kind == "postgres":
        assert "0 bytes given back now: PostgreSQL's autovacuum" in real.stderr
    assert len(task_ids(database)) == 1
    assert_no_orphans(database)


@persisted_only
def test_logs_says_how_much_older_output_was_dropped(database: Database) -> None:
    """After truncation `oneshot logs` prints the newest output and a note on stderr."""

    async def body(store: Store) -> str:
        task_id = await add_task(store, [b"old line\n" * 10, b"old\n", b"new line\n"])
        await prune(store, policy(max_bytes_per_task=9))
        return task_id

    task_id = with_store(database, body)
    shown = oneshot(database, "logs", task_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "new line\n"
    assert shown.stderr.splitlines()[0] == (
        "oneshot: 94 bytes of older output were dropped by retention")


@sqlite_only
def test_db_vacuum_command_turns_on_incremental_auto_vacuum_and_shrinks(
        database: Database) -> None:
    """`oneshot db vacuum` rewrites the file without its free pages."""

    async def body(store: Store) -> list[str]:
        return [await add_task(store, [os.urandom(32 * 1024)] * 4) for _ in range(8)]

    with_store(database, body)
    sql(database, "DELETE FROM tasks")
    before = pragma(database, "page_count")
    done = oneshot(database, "db", "vacuum")
    assert done.returncode == 0, done.stderr
    assert "vacuumed" in done.stderr
    assert pragma(database, "page_count") < before / 4
    assert pragma(database, "auto_vacuum") == 2
    assert oneshot(database, "db", "check").returncode == 0


def test_db_vacuum_without_a_database_fails_cleanly(tmp_path: Path) -> None:
    """Vacuuming a database that does not exist says so and creates nothing."""
    missing = tmp_path / "none.db"
    done = oneshot(Database("sqlite", str(missing)), "db", "vacuum")
    assert done.returncode == 1
    assert "no database at" in done.stderr and not missing.exists()


@postgres_only
def test_db_vacuum_command_on_postgres_runs_vacuum_analyze(database: Database) -> None:
    """On PostgreSQL `oneshot db vacuum` runs a plain VACUUM (ANALYZE) of Oneshot's tables and
    says so; with no tables yet it fails in one line."""
    empty = oneshot(database, "db", "vacuum")
    assert empty.returncode == 1
    assert "no Oneshot tables in" in empty.stderr and "nothing to vacuum" in empty.stderr

    async def body(store: Store) -> None:
        await add_task(store, [b"a" * 1000] * 4)

    with_store(database, body)
    sql(database, "DELETE FROM tasks")
    done = oneshot(database, "db", "vacuum")
    assert done.returncode == 0, done.stderr
    assert "ran VACUUM (ANALYZE) on Oneshot's tables" in done.stderr
    assert f"(schema {database.schema})" in done.stderr
    analyzed = sql(database, "SELECT count(*) FROM pg_stat_user_tables WHERE schemaname = ?"
                             " AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL",
                   (database.schema,))
    assert analyzed == [(6,)]


@persisted_only
def test_worker_prunes_periodically(database: Database) -> None:
    """`oneshot worker` runs the prune every retention.interval seconds."""

    async def body(store: Store) -> None:
        for _ in range(3):
            await add_task(store, [b"w" * 10])

    with_store(database, body)
    age_everything(database)
    env = {"ONESHOT_RETENTION__INTERVAL": "0.2", "ONESHOT_RETENTION__KEEP_LAST": "0",
           "ONESHOT_RECOVERY__ON_STARTUP": "false"}
    worker = subprocess.Popen([oneshot_script(), "worker"], env=cli_env(database, env),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert worker.stderr is not None
    lines: list[str] = []
    # The prune reports after its last commit: wait for the report, not only for the rows to
    # go, or the SIGTERM may cancel the job between the two.
    reader = threading.Thread(target=lambda: lines.extend(worker.stderr or ()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any("pruned" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert task_ids(database) == set()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=20)
        reader.join(timeout=20)
        worker.stderr.close()
    err = "".join(lines)
    assert "pruned 3 tasks" in err
    assert_no_orphans(database)


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


# -- the migration that added retention's columns ------------------------------------------


async def tasks_layout(engine: AsyncEngine) -> tuple[set[str], set[str]]:
    """The columns and index names of ``tasks``."""
    async with engine.connect() as conn:
        def read(sync: Any) -> tuple[set[str], set[str]]:
            inspector = inspect(sync)
            return ({c["name"] for c in inspector.get_columns("tasks")},
                    {str(i["name"]) for i in inspector.get_indexes("tasks")})

        return await conn.run_sync(read)


@persisted_only
def test_migration_0003_round_trip_keeps_rows(database: Database) -> None:
    """Upgrading 0002 -> 0003 adds the marker (0 for existing tasks) and the index; going back
    removes them and keeps every row; the newest revision is reached again."""

    async def main() -> None:
        engine = create_engine(ConnectionOptions(database.url, schema=database.schema))
        try:
            await migrate.upgrade(engine, "0002", schema=database.schema)
            await insert_task_0002(engine)
            await migrate.upgrade(engine, "0003", schema=database.schema)
            assert sql(database, "SELECT log_dropped_bytes FROM tasks") == [(0,)]
            columns, indexes = await tasks_layout(engine)
            assert "log_dropped_bytes" in columns and "ix_tasks_finished_at" in indexes
            await migrate.downgrade(engine, "0002")
            columns, indexes = await tasks_layout(engine)
            assert "log_dropped_bytes" not in columns and "ix_tasks_finished_at" not in indexes
            assert sql(database, "SELECT count(*) FROM log_fragments") == [(1,)]
            await migrate.upgrade(engine, schema=database.schema)
            assert await migrate.current_revision(engine) == migrate.head_revision()
        finally:
            await engine.dispose()

    anyio.run(main)
    assert sql(database, "SELECT log_dropped_bytes FROM tasks") == [(0,)]
    assert_no_orphans(database)


async def insert_task_0002(engine: AsyncEngine) -> None:
    def insert(conn: Any) -> None:
        q = connection_query(conn)
        q("INSERT INTO tasks (id, kind, state, created_at, updated_at)"
          " VALUES ('t1', 'command', 'COMPLETED', 1.0, 1.0)", ())
        q("INSERT INTO log_fragments (task_id, seq, stream, at, data) VALUES ('t1', 0, 1, 1.0, ?)",
          (b"\x00\xff",))

    async with engine.begin() as conn:
        await conn.run_sync(insert)
