"""Retention's SQL: the chunk write operations and the reads that plan them.

Each chunk (:class:`DeleteAged`, :class:`TruncateTasks`, :class:`DropOldest`,
:class:`IncrementalVacuum`) is a write operation for the store's group-commit writer: its
``apply(cursor)`` chooses what to delete inside its own transaction and deletes it. The reads
(:func:`keep_cutoff`, :func:`oversized`, :func:`total_bytes`, :func:`walk_oldest`) and the pure
planners (:func:`plan_cut`, :func:`pick_oldest`, :func:`after_cuts`) serve both a chunk and a dry
run, which runs them through a :data:`Query` on a read connection. The policy, the reports and
the prune loop are in :mod:`durable.retention`.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.engine import Connection

from durable.states import TERMINAL_STATES

INCREMENTAL = 2  # PRAGMA auto_vacuum value

_FINISHED = "t.state IN (" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES)) + ")"
_FINISHED_NO_INDEX = "+" + _FINISHED  # a filter only: the query walks another index
# Oldest finished first, by ix_tasks_finished_at (the unary plus keeps the planner off the
# state index, which would sort every finished task for each chunk).
AGED = (f"{_FINISHED_NO_INDEX} AND t.finished_at IS NOT NULL AND t.finished_at < ?"
        " AND +t.created_at < ?")
_OLDEST_FRAGMENTS = (
    "SELECT f.rowid, f.task_id, f.seq, f.at, length(f.data) FROM log_fragments AS f"
    f" CROSS JOIN tasks AS t WHERE t.id = f.task_id AND {_FINISHED} AND t.created_at < ?"
)

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one SQL statement with ``?`` parameters and returns its rows (a write or read side)."""


# -- chunks: write operations run by the store's writer thread ----------------------------


@dataclass(slots=True)
class Chunk:
    tasks: int = 0
    fragments: int = 0
    bytes: int = 0
    touched: set[str] = field(default_factory=set)
    done: bool = True
    remaining: tuple[str, ...] = ()


@dataclass(slots=True)
class Cut:
    """Which of a task's oldest fragments go: all with ``seq <= through``, then ``trim``."""

    fragments: int = 0
    bytes: int = 0
    through: int | None = None
    trim: tuple[int, int] | None = None  # (seq, bytes cut from its start)
    complete: bool = True


def plan_cut(rows: Iterable[tuple[int, int]], excess: int | None,
             max_rows: int | None = None, max_bytes: int | None = None) -> Cut:
    """Drop ``excess`` bytes (None: everything) from ``(seq, size)`` rows, oldest first,
    within the budget; ``complete`` is false when the budget ran out first."""
    cut = Cut()
    for seq, size in rows:
        remaining = None if excess is None else excess - cut.bytes
        if remaining is not None and remaining <= 0:
            break
        if (max_rows is not None and cut.fragments >= max_rows) or (
                max_bytes is not None and cut.bytes >= max_bytes):
            cut.complete = False
            break
        if remaining is None or size <= remaining:
            cut.fragments, cut.bytes, cut.through = cut.fragments + 1, cut.bytes + size, seq
        else:
            cut.trim, cut.bytes = (seq, remaining), cut.bytes + remaining
    return cut


def _cut_task(q: Query, task_id: str, excess: int | None, rows: int, nbytes: int) -> Cut:
    """Delete (within the budget) a task's oldest output and count it in its marker."""
    sizes = q("SELECT seq, length(data) FROM log_fragments WHERE task_id = ? ORDER BY seq"
              " LIMIT ?", (task_id, rows + 1))
    cut = plan_cut(sizes, excess, rows, nbytes)
    if cut.through is not None:
        q("DELETE FROM log_fragments WHERE task_id = ? AND seq <= ?", (task_id, cut.through))
    if cut.trim is not None:
        seq, drop = cut.trim
        q("UPDATE log_fragments SET data = substr(data, ?) WHERE task_id = ? AND seq = ?",
          (drop + 1, task_id, seq))
    if cut.bytes:
        q("UPDATE tasks SET log_dropped_bytes = log_dropped_bytes + ? WHERE id = ?",
          (cut.bytes, task_id))
    return cut


@dataclass(frozen=True, slots=True)
class DeleteAged:
    finished_before: float
    keep_last: int
    rows: int
    bytes: int

    def apply(self, cur: sqlite3.Cursor) -> Chunk:
        q = _cursor_query(cur)
        params = (self.finished_before, keep_cutoff(q, self.keep_last))
        ids = [row[0] for row in q(f"SELECT t.id FROM tasks AS t WHERE {AGED}"
                                   " ORDER BY t.finished_at LIMIT ?", (*params, self.rows))]
        if not ids:
            return Chunk()
        sizes = {tid: (n, b) for tid, n, b in q(
            "SELECT task_id, count(*), sum(length(data)) FROM log_fragments"
            f" WHERE task_id IN ({_marks(ids)}) GROUP BY task_id", ids)}
        chunk, taken = Chunk(done=len(ids) < self.rows), list[str]()
        for tid in ids:
            n, b = sizes.get(tid, (0, 0))
            if taken and (chunk.fragments + n > self.rows or chunk.bytes + b > self.bytes):
                chunk.done = False
                break
            taken.append(tid)
            chunk.fragments, chunk.bytes = chunk.fragments + n, chunk.bytes + b
        if len(taken) == 1 and (chunk.fragments > self.rows or chunk.bytes > self.bytes):
            # One task with more output than a chunk: its output goes first, in pieces.
            cut = _cut_task(q, taken[0], None, self.rows, self.bytes)
            return Chunk(fragments=cut.fragments, bytes=cut.bytes, done=False)
        q(f"DELETE FROM tasks WHERE id IN ({_marks(taken)})", taken)
        chunk.tasks = len(taken)
        return chunk


@dataclass(frozen=True, slots=True)
class TruncateTasks:
    task_ids: tuple[str, ...]
    max_bytes: int
    rows: int
    bytes: int

    def apply(self, cur: sqlite3.Cursor) -> Chunk:
        q, chunk = _cursor_query(cur), Chunk()
        for index, task_id in enumerate(self.task_ids):
            rows, nbytes = self.rows - chunk.fragments, self.bytes - chunk.bytes
            if rows <= 0 or nbytes <= 0:
                return replace(chunk, done=False, remaining=self.task_ids[index:])
            if not q(f"SELECT 1 FROM tasks AS t WHERE t.id = ? AND {_FINISHED}", (task_id,)):
                continue  # gone, or (never, as states go) not finished any more
            ((total,),) = q("SELECT coalesce(sum(length(data)), 0) FROM log_fragments"
                            " WHERE task_id = ?", (task_id,))
            if total <= self.max_bytes:
                continue
            cut = _cut_task(q, task_id, total - self.max_bytes, rows, nbytes)
            chunk.fragments, chunk.bytes = chunk.fragments + cut.fragments, chunk.bytes + cut.bytes
            chunk.touched.add(task_id)
            if not cut.complete:
                return replace(chunk, done=False, remaining=self.task_ids[index:])
        return chunk


@dataclass(frozen=True, slots=True)
class DropOldest:
    excess: int
    keep_last: int
    rows: int
    bytes: int

    def apply(self, cur: sqlite3.Cursor) -> Chunk:
        q = _cursor_query(cur)
        found = q(f"{_OLDEST_FRAGMENTS} ORDER BY f.at, f.rowid LIMIT ?",
                  (keep_cutoff(q, self.keep_last), self.rows))
        picked = pick_oldest(((rowid, tid, size) for rowid, tid, _, _, size in found),
                              self.excess, self.bytes)
        rowids, per_task, covered = picked
        if rowids:
            q(f"DELETE FROM log_fragments WHERE rowid IN ({_marks(rowids)})", rowids)
        for task_id, dropped in per_task.items():
            q("UPDATE tasks SET log_dropped_bytes = log_dropped_bytes + ? WHERE id = ?",
              (dropped, task_id))
        done = covered or (len(found) < self.rows and len(rowids) == len(found))
        return Chunk(fragments=len(rowids), bytes=sum(per_task.values()),
                      touched=set(per_task), done=done)


@dataclass(frozen=True, slots=True)
class IncrementalVacuum:
    pages: int

    def apply(self, cur: sqlite3.Cursor) -> tuple[int, int, int]:
        """(auto_vacuum mode, pages released, free pages left)."""
        mode = cur.execute("PRAGMA auto_vacuum").fetchone()[0]
        free = cur.execute("PRAGMA freelist_count").fetchone()[0]
        if mode != INCREMENTAL:
            return mode, 0, free
        for _ in range(min(free, self.pages)):
            # sqlite3 steps a statement without result columns once: one page per execute.
            cur.execute("PRAGMA incremental_vacuum")
        left = cur.execute("PRAGMA freelist_count").fetchone()[0]
        return mode, free - left, left


def pick_oldest(rows: Iterable[tuple[Any, str, int]], excess: int, max_bytes: int | None
                ) -> tuple[list[Any], dict[str, int], bool]:
    """Whole fragments ``(key, task id, size)``, oldest first, until ``excess`` bytes are
    covered or ``max_bytes`` taken: (keys, bytes per task, whether the excess is covered)."""
    keys: list[Any] = []
    per_task: dict[str, int] = {}
    dropped = 0
    for key, task_id, size in rows:
        if dropped >= excess or (max_bytes is not None and dropped >= max_bytes):
            break
        keys.append(key)
        per_task[task_id] = per_task.get(task_id, 0) + size
        dropped += size
    return keys, per_task, dropped >= excess


# -- reads shared by both sides -------------------------------------------------------------


def keep_cutoff(q: Query, keep_last: int) -> float:
    """Finished tasks created at or after this time are the newest ``keep_last``."""
    if keep_last == 0:
        return math.inf
    rows = q(f"SELECT t.created_at FROM tasks AS t WHERE {_FINISHED_NO_INDEX}"
             " ORDER BY t.created_at DESC LIMIT 1 OFFSET ?", (keep_last - 1,))
    return float(rows[0][0]) if rows else -math.inf


def oversized(q: Query, max_bytes: int, where: str = "", params: Sequence[Any] = ()
              ) -> list[str]:
    """Finished tasks storing more than ``max_bytes`` of output (a scan of all fragments)."""
    return [row[0] for row in q(
        "SELECT t.id FROM tasks AS t JOIN (SELECT task_id FROM log_fragments GROUP BY task_id"
        f" HAVING sum(length(data)) > ?) AS s ON s.task_id = t.id WHERE {_FINISHED}{where}"
        " ORDER BY t.id", (max_bytes, *params))]


def total_bytes(q: Query) -> int:
    return int(q("SELECT coalesce(sum(length(data)), 0) FROM log_fragments", ())[0][0])


def walk_oldest(q: Query, keep: float, survives: str, aged: Sequence[Any]
                ) -> Iterator[tuple[int, str, int, int]]:
    """Every fragment the total rule may take, oldest first, in pages: (rowid, task, seq,
    size)."""
    after: tuple[float, int] = (-math.inf, -1)
    while True:
        page = q(f"{_OLDEST_FRAGMENTS}{survives} AND (f.at, f.rowid) > (?, ?)"
                 " ORDER BY f.at, f.rowid LIMIT 1000", (keep, *aged, *after))
        for rowid, task_id, seq, _, size in page:
            yield rowid, task_id, seq, size
        if len(page) < 1000:
            return
        after = (page[-1][3], page[-1][0])


def after_cuts(rows: Iterator[tuple[int, str, int, int]], cuts: dict[str, Cut]
               ) -> Iterator[tuple[Any, str, int]]:
    """The fragments as the per-task rule leaves them: deleted ones skipped, the cut one
    shorter."""
    for rowid, task_id, seq, size in rows:
        cut = cuts.get(task_id)
        if cut is not None and cut.through is not None and seq <= cut.through:
            continue
        if cut is not None and cut.trim is not None and cut.trim[0] == seq:
            size -= cut.trim[1]
        yield rowid, task_id, size


def _cursor_query(cur: sqlite3.Cursor) -> Query:
    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return cur.execute(sql, tuple(params)).fetchall()

    return query


def connection_query(conn: Connection) -> Query:
    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.exec_driver_sql(sql, tuple(params)).all()]

    return query


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)
