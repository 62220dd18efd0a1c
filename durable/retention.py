"""Retention: keep the store bounded by the policies in settings, in short transactions.

The rules, applied in this order by :func:`prune`:

* ``max_age``: a finished task that finished longer ago is deleted whole; its history, output,
  steps and process handle go with it (``ON DELETE CASCADE``, in the same transaction).
* ``max_bytes_per_task``: a finished task keeps its newest output up to this many bytes; the
  oldest fragments are deleted and the one at the boundary loses its first bytes.
* ``max_total_bytes``: while all stored output is larger, the oldest fragments of finished tasks
  are deleted, oldest first across tasks.

The newest ``keep_last`` finished tasks (by creation time) are never deleted and never lose
output to the age and total rules. A task that has not finished is never touched by any rule.
Every deletion of output adds its size to ``tasks.log_dropped_bytes`` in the same transaction,
so a reader sees each task either before or after a chunk, with the marker matching the gap.

Each chunk is one write operation through the store's group-commit writer: it chooses what to
delete *inside* its own transaction (never from an earlier, possibly stale read), deletes at
most ``chunk_rows`` tasks or fragments and about ``chunk_bytes`` bytes, and commits. An
interrupted prune leaves whole chunks done and nothing half-deleted. A dry run computes the
same counts from one read snapshot and writes nothing.

This module holds the policy, the reports, :func:`prune` and :func:`vacuum` with their loop and
the dry-run tally; the chunk write operations and the reads that plan them are in
:mod:`durable.retention_plan`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio

from durable.engine import ConnectionOptions, connect_sqlite
from durable.exceptions import StoreError
from durable.persistence import PersistenceManager
from durable.retention_plan import (
    AGED,
    INCREMENTAL,
    Chunk,
    Cut,
    DeleteAged,
    DropOldest,
    IncrementalVacuum,
    Query,
    TruncateTasks,
    after_cuts,
    connection_query,
    keep_cutoff,
    oversized,
    pick_oldest,
    plan_cut,
    total_bytes,
    walk_oldest,
)
from durable.writer import GroupCommitWriter

if TYPE_CHECKING:
    from config.settings import RetentionSettings

__all__ = ["RULES", "PruneReport", "RetentionPolicy", "RuleCount", "VacuumReport", "prune",
           "vacuum"]

AGE, TASK_BYTES, TOTAL_BYTES = "max_age", "max_bytes_per_task", "max_total_bytes"
RULES = (AGE, TASK_BYTES, TOTAL_BYTES)
SMALL_DATABASE_BYTES = 32 * 1024 * 1024
CHUNK_PAUSE = 0.02
"""Seconds between prune chunks with the write lock free (SQLite's busy wait polls)."""
"""A prune converts a database without incremental auto-vacuum by a full VACUUM up to this size
(a few hundred milliseconds at most); a larger one waits for ``oneshot db vacuum``."""
VACUUM_PAGES_PER_CHUNK = 1024  # about 80 ms of write lock each


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What to keep; ``None`` switches a rule off. ``max_age`` is in seconds."""

    max_age: float | None = None
    max_bytes_per_task: int | None = None
    max_total_bytes: int | None = None
    keep_last: int = 0
    chunk_rows: int = 500
    chunk_bytes: int = 32 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: RetentionSettings) -> RetentionPolicy:
        days = settings.max_age_days
        return cls(max_age=None if days is None else days * 86400.0,
                   max_bytes_per_task=settings.max_bytes_per_task,
                   max_total_bytes=settings.max_total_bytes, keep_last=settings.keep_last,
                   chunk_rows=settings.chunk_rows, chunk_bytes=settings.chunk_bytes)


@dataclass(frozen=True, slots=True)
class RuleCount:
    """What one rule deleted (or, in a dry run, would delete)."""

    tasks: int = 0
    """Tasks deleted whole."""
    truncated: int = 0
    """Tasks that lost their oldest output."""
    fragments: int = 0
    """Log fragments deleted (a fragment only shortened is not counted)."""
    bytes: int = 0
    """Output bytes deleted."""


@dataclass(frozen=True, slots=True)
class PruneReport:
    """The outcome of :func:`prune`."""

    dry_run: bool
    rules: dict[str, RuleCount] = field(default_factory=lambda: {r: RuleCount() for r in RULES})
    chunks: int = 0
    """Write transactions that deleted (one commit each)."""
    longest_chunk: float = 0.0
    """Seconds from submitting the longest write (a chunk or a vacuum step) to its commit:
    bounds how long the prune held the write lock at once."""
    space: str = "unchanged"
    """How space was given back: ``incremental`` (free pages returned to the file system),
    ``vacuumed`` (a small database rewritten with incremental auto-vacuum), ``needs vacuum``
    (run ``oneshot db vacuum``; freed pages are reused meanwhile) or ``unchanged``."""
    pages_released: int = 0
    page_size: int = 0

    @property
    def tasks_deleted(self) -> int:
        return sum(count.tasks for count in self.rules.values())

    @property
    def fragments_deleted(self) -> int:
        return sum(count.fragments for count in self.rules.values())

    @property
    def bytes_freed(self) -> int:
        """Output bytes deleted by every rule."""
        return sum(count.bytes for count in self.rules.values())

    @property
    def bytes_released(self) -> int:
        """Bytes the database file gave back to the file system."""
        return self.pages_released * self.page_size


@dataclass(frozen=True, slots=True)
class VacuumReport:
    """Database size in bytes before and after :func:`vacuum`."""

    before: int
    after: int


async def prune(store: PersistenceManager, policy: RetentionPolicy, *, dry_run: bool = False,
                now: float | None = None, release_space: bool = True,
                on_chunk: Callable[[PruneReport], object] | None = None) -> PruneReport:
    """Apply ``policy`` now (``now``: the clock the age rule uses) and report what went.

    ``dry_run`` counts from one read snapshot and deletes nothing. ``on_chunk`` is called with
    the report so far after every committed chunk. Afterwards, unless ``release_space`` is
    false, freed pages are given back (see :attr:`PruneReport.space`).
    """
    now = time.time() if now is None else now
    finished_before = None if policy.max_age is None else now - policy.max_age
    if dry_run:
        async with store.engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN")  # every count from one snapshot
            rules = await conn.run_sync(
                lambda c: _plan(connection_query(c), policy, finished_before))
            await conn.rollback()
        return PruneReport(dry_run=True, rules=rules)
    run = _Run(store, on_chunk)
    budget = (policy.chunk_rows, policy.chunk_bytes)
    if finished_before is not None:
        done = False
        while not done:
            done = (await run.chunk(AGE, DeleteAged(finished_before, policy.keep_last,
                                                    *budget))).done
    if policy.max_bytes_per_task is not None:
        limit = policy.max_bytes_per_task
        remaining = tuple(await run.read(lambda q: oversized(q, limit)))
        while remaining:
            remaining = (await run.chunk(TASK_BYTES, TruncateTasks(remaining, limit,
                                                                   *budget))).remaining
    if policy.max_total_bytes is not None:
        excess = await run.read(total_bytes) - policy.max_total_bytes
        while excess > 0:
            result = await run.chunk(TOTAL_BYTES, DropOldest(excess, policy.keep_last, *budget))
            excess -= result.bytes
            if result.done:
                break
    report = run.report()
    if release_space and (report.fragments_deleted or report.tasks_deleted):
        report = await _release_space(store, report)
    return report


async def vacuum(options: ConnectionOptions) -> VacuumReport:
    """Rewrite the database without free pages and with incremental auto-vacuum on.

    Runs on a connection of its own (VACUUM cannot run inside a transaction, and the store's
    writer always opens one), so no store needs to be open in this process; another process's
    writes wait, and it waits up to ``busy_timeout`` for theirs.
    """
    return await anyio.to_thread.run_sync(_vacuum_file, options)


# -- dry run: what a prune would delete, from one read snapshot -----------------------------


def _plan(q: Query, policy: RetentionPolicy, finished_before: float | None
          ) -> dict[str, RuleCount]:
    """A dry run: what :func:`prune` would delete, by rule, from the current snapshot."""
    keep = keep_cutoff(q, policy.keep_last)
    rules = {rule: RuleCount() for rule in RULES}
    survives, aged = "", tuple[float, ...]()
    if finished_before is not None:
        aged = (finished_before, keep)
        ((tasks,),) = q(f"SELECT count(*) FROM tasks AS t WHERE {AGED}", aged)
        ((fragments, nbytes),) = q(
            "SELECT count(*), coalesce(sum(length(f.data)), 0) FROM tasks AS t"
            f" JOIN log_fragments AS f ON f.task_id = t.id WHERE {AGED}", aged)
        rules[AGE] = RuleCount(tasks=tasks, fragments=fragments, bytes=nbytes)
        survives = f" AND NOT ({AGED})"
    cuts: dict[str, Cut] = {}
    if policy.max_bytes_per_task is not None:
        for task_id in oversized(q, policy.max_bytes_per_task, survives, aged):
            sizes = q("SELECT seq, length(data) FROM log_fragments WHERE task_id = ?"
                      " ORDER BY seq", (task_id,))
            cuts[task_id] = plan_cut(sizes, sum(s for _, s in sizes) - policy.max_bytes_per_task)
        rules[TASK_BYTES] = RuleCount(truncated=len(cuts),
                                      fragments=sum(c.fragments for c in cuts.values()),
                                      bytes=sum(c.bytes for c in cuts.values()))
    if policy.max_total_bytes is not None:
        excess = (total_bytes(q) - rules[AGE].bytes - rules[TASK_BYTES].bytes
                  - policy.max_total_bytes)
        if excess > 0:
            rows = after_cuts(walk_oldest(q, keep, survives, aged), cuts)
            keys, per_task, _ = pick_oldest(rows, excess, None)
            rules[TOTAL_BYTES] = RuleCount(truncated=len(per_task), fragments=len(keys),
                                           bytes=sum(per_task.values()))
    return rules


# -- plumbing -------------------------------------------------------------------------------


class _Run:
    """Submits chunks one at a time and keeps the tally."""

    def __init__(self, store: PersistenceManager,
                 on_chunk: Callable[[PruneReport], object] | None) -> None:
        self.store, self.on_chunk = store, on_chunk
        # The writer runs any operation with an ``apply(cursor)``; ours are not in WriteOp.
        self.writer: GroupCommitWriter[Any] = store.writer
        self.counts = {rule: [0, 0, 0] for rule in RULES}  # tasks, fragments, bytes
        self.touched: dict[str, set[str]] = {rule: set() for rule in RULES}
        self.chunks, self.longest = 0, 0.0

    async def read(self, fn: Callable[[Query], Any]) -> Any:
        async with self.store.engine.connect() as conn:
            return await conn.run_sync(lambda c: fn(connection_query(c)))

    async def chunk(self, rule: str, op: Any) -> Chunk:
        started = time.perf_counter()
        result: Chunk = await self.writer.submit(op)
        self.longest = max(self.longest, time.perf_counter() - started)
        self.chunks += 1
        counts = self.counts[rule]
        counts[0] += result.tasks
        counts[1] += result.fragments
        counts[2] += result.bytes
        self.touched[rule] |= result.touched
        if self.on_chunk is not None:
            self.on_chunk(self.report())
        # Leave the write lock free for a moment: another process's busy wait polls, and
        # back-to-back chunks would starve it for the whole prune.
        await anyio.sleep(CHUNK_PAUSE)
        return result

    def report(self) -> PruneReport:
        rules = {rule: RuleCount(tasks=c[0], truncated=len(self.touched[rule]), fragments=c[1],
                                 bytes=c[2]) for rule, c in self.counts.items()}
        return PruneReport(dry_run=False, rules=rules, chunks=self.chunks,
                           longest_chunk=self.longest)


async def _release_space(store: PersistenceManager, report: PruneReport) -> PruneReport:
    writer: GroupCommitWriter[Any] = store.writer
    released, longest = 0, report.longest_chunk
    while True:
        started = time.perf_counter()
        mode, pages, left = await writer.submit(IncrementalVacuum(VACUUM_PAGES_PER_CHUNK))
        longest = max(longest, time.perf_counter() - started)
        released += pages
        if mode != INCREMENTAL or not left or not pages:
            break
    report = replace(report, longest_chunk=longest)
    async with store.engine.connect() as conn:
        page_size = int((await conn.exec_driver_sql("PRAGMA page_size")).scalar_one())
        page_count = int((await conn.exec_driver_sql("PRAGMA page_count")).scalar_one())
    if mode == INCREMENTAL:
        return replace(report, space="incremental", pages_released=released,
                       page_size=page_size)
    if page_count * page_size > SMALL_DATABASE_BYTES:
        return replace(report, space="needs vacuum", page_size=page_size)
    sizes = await vacuum(store.options)
    return replace(report, space="vacuumed", page_size=page_size,
                   pages_released=(sizes.before - sizes.after) // page_size)


def _vacuum_file(options: ConnectionOptions) -> VacuumReport:
    conn = connect_sqlite(options)
    try:
        before = _database_bytes(conn)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # VACUUM makes it take effect
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return VacuumReport(before, _database_bytes(conn))
    except sqlite3.Error as exc:
        raise StoreError(f"vacuum failed: {exc}") from exc
    finally:
        conn.close()


def _database_bytes(conn: sqlite3.Connection) -> int:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(conn.execute("PRAGMA page_count").fetchone()[0]) * int(page_size)
