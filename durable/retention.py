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

Each chunk is one write transaction that no other prune chunk runs alongside (SQLite: through
the store's group-commit writer, under the database's write lock; PostgreSQL: under a
transaction advisory lock, see :mod:`durable.retention_postgres`): it chooses what to delete
*inside* its own transaction (never from an earlier, possibly stale read), deletes at most
``chunk_rows`` tasks or fragments and about ``chunk_bytes`` bytes, and commits. An interrupted
prune leaves whole chunks done and nothing half-deleted; several prunes at once end where one
would. A dry run computes the same counts from one read snapshot and writes nothing.

This module holds the policy, the reports, :func:`prune` and :func:`vacuum` with their loop and
the dry-run tally, the same on both engines; the chunks and the reads that plan them are in
:mod:`durable.retention_plan`, how they run on an engine in :mod:`durable.retention_engine`, and
what differs per engine (running a chunk, giving space back) in :mod:`durable.retention_sqlite`
and :mod:`durable.retention_postgres`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeAlias

import anyio

from durable.engine import ConnectionOptions
from durable.exceptions import StoreError
from durable.persistence import PersistenceManager
from durable.postgres import PostgresStore
from durable.retention_engine import Chunk, ChunkOp, Dialect, Query, RetentionEngine
from durable.retention_plan import (
    Cut,
    DeleteAged,
    DropOldest,
    TruncateTasks,
    after_cuts,
    keep_cutoff,
    oversized,
    oversized_sizes,
    pick_oldest,
    plan_cut,
    total_bytes,
    total_cutoff,
    walk_oldest,
)
from durable.retention_postgres import PostgresRetention, vacuum_tables
from durable.retention_sqlite import SqliteRetention, vacuum_file
from durable.store import Store

if TYPE_CHECKING:
    from config.settings import RetentionSettings

__all__ = ["RULES", "PruneReport", "RetentionPolicy", "RuleCount", "SqlStore", "VacuumReport",
           "prune", "retention_engine", "vacuum"]

AGE, TASK_BYTES, TOTAL_BYTES = "max_age", "max_bytes_per_task", "max_total_bytes"
RULES = (AGE, TASK_BYTES, TOTAL_BYTES)

SqlStore: TypeAlias = PersistenceManager | PostgresStore
"""The stores retention works on (a store in memory keeps nothing to prune)."""


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
    """How space was given back. SQLite: ``incremental`` (free pages returned to the file
    system), ``vacuumed`` (a small database rewritten with incremental auto-vacuum), ``needs
    vacuum`` (run ``oneshot db vacuum``; freed pages are reused meanwhile). PostgreSQL:
    ``autovacuum`` (nothing given back now: autovacuum makes the space reusable, the files keep
    their size). ``unchanged``: nothing was deleted."""
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
        """Bytes the database file gave back to the file system (0 on PostgreSQL)."""
        return self.pages_released * self.page_size


@dataclass(frozen=True, slots=True)
class VacuumReport:
    """Database size in bytes before and after :func:`vacuum` (PostgreSQL: Oneshot's tables
    with their indexes)."""

    before: int
    after: int


def retention_engine(store: Store) -> RetentionEngine:
    """How retention runs on ``store``; StoreError for a store it cannot prune."""
    if isinstance(store, PersistenceManager):
        return SqliteRetention(store)
    if isinstance(store, PostgresStore):
        return PostgresRetention(store)
    raise StoreError(f"retention works on a SQL store, not {type(store).__name__}")


async def prune(store: Store, policy: RetentionPolicy, *, dry_run: bool = False,
                now: float | None = None, release_space: bool = True,
                on_chunk: Callable[[PruneReport], object] | None = None) -> PruneReport:
    """Apply ``policy`` now (``now``: the clock the age rule uses) and report what went.

    ``store`` is a SQLite or PostgreSQL store (:data:`SqlStore`). ``dry_run`` counts from one
    read snapshot and deletes nothing. ``on_chunk`` is called with the report so far after
    every committed chunk. Afterwards, unless ``release_space`` is false, freed space is given
    back as far as the engine does (see :attr:`PruneReport.space`).
    """
    engine = retention_engine(store)
    d = engine.dialect
    now = time.time() if now is None else now
    finished_before = None if policy.max_age is None else now - policy.max_age
    if dry_run:
        rules = await engine.snapshot(lambda q: _plan(q, d, policy, finished_before))
        return PruneReport(dry_run=True, rules=rules)
    run = _Run(engine, on_chunk)
    budget = (policy.chunk_rows, policy.chunk_bytes)
    if finished_before is not None:
        done = False
        while not done:
            done = (await run.chunk(AGE, DeleteAged(finished_before, policy.keep_last,
                                                    *budget))).done
    if policy.max_bytes_per_task is not None:
        limit = policy.max_bytes_per_task
        remaining = tuple(await engine.read(lambda q: oversized(q, d, limit)))
        while remaining:
            remaining = (await run.chunk(TASK_BYTES, TruncateTasks(remaining, limit,
                                                                   *budget))).remaining
    if policy.max_total_bytes is not None:
        total = policy.max_total_bytes
        plan = await engine.snapshot(lambda q: total_cutoff(q, d, total, policy.keep_last))
        excess, through = plan if plan is not None else (0, d.start)
        while excess > 0:
            result = await run.chunk(TOTAL_BYTES, DropOldest(excess, through, policy.keep_last,
                                                             *budget))
            excess -= result.bytes
            if result.done:
                break
    report = run.report()
    if release_space and (report.bytes_freed or report.tasks_deleted):
        space = await engine.release_space()
        report = replace(report, space=space.kind, pages_released=space.pages_released,
                         page_size=space.page_size,
                         longest_chunk=max(report.longest_chunk, space.longest))
    return report


async def vacuum(options: ConnectionOptions) -> VacuumReport:
    """SQLite: rewrite the database without free pages and with incremental auto-vacuum on
    (a full ``VACUUM``). PostgreSQL: a plain ``VACUUM (ANALYZE)`` of Oneshot's tables, which
    makes deleted rows' space reusable now; it seldom shrinks them (no ``VACUUM FULL``).

    Runs on a connection of its own, outside any transaction, so no store needs to be open
    in this process.
    """
    if options.is_postgresql:
        return VacuumReport(*await vacuum_tables(options))
    return VacuumReport(*await anyio.to_thread.run_sync(vacuum_file, options))


# -- dry run: what a prune would delete, from one read snapshot -----------------------------


def _plan(q: Query, d: Dialect, policy: RetentionPolicy, finished_before: float | None
          ) -> dict[str, RuleCount]:
    """A dry run: what :func:`prune` would delete, by rule, from the current snapshot."""
    keep = keep_cutoff(q, d, policy.keep_last)
    rules = {rule: RuleCount() for rule in RULES}
    survives, aged = "", tuple[float, ...]()
    if finished_before is not None:
        aged = (finished_before, keep)
        ((tasks,),) = q(f"SELECT count(*) FROM tasks AS t WHERE {d.aged}", aged)
        ((fragments, nbytes),) = q(
            "SELECT count(*), coalesce(sum(length(f.data)), 0) FROM tasks AS t"
            f" JOIN log_fragments AS f ON f.task_id = t.id WHERE {d.aged}", aged)
        rules[AGE] = RuleCount(tasks=int(tasks), fragments=int(fragments), bytes=int(nbytes))
        survives = f" AND NOT ({d.aged})"
    cuts: dict[str, Cut] = {}
    if policy.max_bytes_per_task is not None:
        limit = policy.max_bytes_per_task
        for task_id, sizes in oversized_sizes(q, d, limit, survives, aged).items():
            cuts[task_id] = plan_cut(sizes, sum(s for _, s in sizes) - limit)
        rules[TASK_BYTES] = RuleCount(truncated=len(cuts),
                                      fragments=sum(c.fragments for c in cuts.values()),
                                      bytes=sum(c.bytes for c in cuts.values()))
    if policy.max_total_bytes is not None:
        excess = (total_bytes(q) - rules[AGE].bytes - rules[TASK_BYTES].bytes
                  - policy.max_total_bytes)
        if excess > 0:
            rows = after_cuts(walk_oldest(q, d, keep, survives, aged), cuts)
            keys, per_task, _ = pick_oldest(rows, excess, None)
            rules[TOTAL_BYTES] = RuleCount(truncated=len(per_task), fragments=len(keys),
                                           bytes=sum(per_task.values()))
    return rules


# -- plumbing -------------------------------------------------------------------------------


class _Run:
    """Submits chunks one at a time and keeps the tally."""

    def __init__(self, engine: RetentionEngine,
                 on_chunk: Callable[[PruneReport], object] | None) -> None:
        self.engine, self.on_chunk = engine, on_chunk
        self.counts = {rule: [0, 0, 0] for rule in RULES}  # tasks, fragments, bytes
        self.touched: dict[str, set[str]] = {rule: set() for rule in RULES}
        self.chunks, self.longest = 0, 0.0

    async def chunk(self, rule: str, op: ChunkOp) -> Chunk:
        started = time.perf_counter()
        result = await self.engine.chunk(op)
        self.longest = max(self.longest, time.perf_counter() - started)
        self.chunks += 1
        counts = self.counts[rule]
        counts[0] += result.tasks
        counts[1] += result.fragments
        counts[2] += result.bytes
        self.touched[rule] |= result.touched
        if self.on_chunk is not None:
            self.on_chunk(self.report())
        if self.engine.pause:
            # Leave the write lock free for a moment: another process's busy wait polls, and
            # back-to-back chunks would starve it for the whole prune.
            await anyio.sleep(self.engine.pause)
        return result

    def report(self) -> PruneReport:
        rules = {rule: RuleCount(tasks=c[0], truncated=len(self.touched[rule]), fragments=c[1],
                                 bytes=c[2]) for rule, c in self.counts.items()}
        return PruneReport(dry_run=False, rules=rules, chunks=self.chunks,
                           longest_chunk=self.longest)


