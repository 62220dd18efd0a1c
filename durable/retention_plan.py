"""Retention's SQL, the same on every engine: the chunks and the reads that plan them.

Each chunk (:class:`DeleteAged`, :class:`TruncateTasks`, :class:`DropOldest`) is run by an
engine (:class:`durable.retention_engine.RetentionEngine`) inside one write transaction that no
other prune chunk runs alongside; its ``run`` chooses what to delete inside that transaction,
from the committed state, and deletes it. The reads (:func:`keep_cutoff`, :func:`oversized`,
:func:`oversized_sizes`, :func:`total_bytes`, :func:`walk_oldest`, :func:`total_cutoff`) and the
pure planners (:func:`plan_cut`, :func:`pick_oldest`, :func:`after_cuts`) serve both a chunk and
a dry run. The policy, the reports and the prune loop are in :mod:`durable.retention`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from durable.retention_engine import Chunk, Dialect, Position, Query, marks

# -- chunks: each runs in its own write transaction -----------------------------------------


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
    """Delete (within the budget) a task's oldest output; the caller counts it in the task's
    marker (:func:`_add_dropped`), in the same transaction."""
    sizes = q("SELECT seq, length(data) FROM log_fragments WHERE task_id = ? ORDER BY seq"
              " LIMIT ?", (task_id, rows + 1))
    cut = plan_cut(sizes, excess, rows, nbytes)
    if cut.through is not None:
        q("DELETE FROM log_fragments WHERE task_id = ? AND seq <= ?", (task_id, cut.through))
    if cut.trim is not None:
        seq, drop = cut.trim
        q("UPDATE log_fragments SET data = substr(data, ?) WHERE task_id = ? AND seq = ?",
          (drop + 1, task_id, seq))
    return cut


def _add_dropped(q: Query, dropped: dict[str, int]) -> None:
    """Add each task's deleted bytes to its ``log_dropped_bytes``: one statement per 500."""
    items = [(task_id, n) for task_id, n in dropped.items() if n]
    for start in range(0, len(items), 500):
        batch = items[start:start + 500]
        cases = " ".join("WHEN ? THEN CAST(? AS BIGINT)" for _ in batch)
        q(f"UPDATE tasks SET log_dropped_bytes = log_dropped_bytes + CASE id {cases} END"
          f" WHERE id IN ({marks(batch)})",
          [*(v for item in batch for v in item), *(task_id for task_id, _ in batch)])


@dataclass(frozen=True, slots=True)
class DeleteAged:
    finished_before: float
    keep_last: int
    rows: int
    bytes: int

    def run(self, q: Query, d: Dialect) -> Chunk:
        params = (self.finished_before, keep_cutoff(q, d, self.keep_last))
        ids = [row[0] for row in q(f"SELECT t.id FROM tasks AS t WHERE {d.aged}"
                                   " ORDER BY t.finished_at LIMIT ?", (*params, self.rows))]
        if not ids:
            return Chunk()
        sizes = {tid: (n, b) for tid, n, b in q(
            "SELECT task_id, count(*), sum(length(data)) FROM log_fragments"
            f" WHERE task_id IN ({marks(ids)}) GROUP BY task_id", ids)}
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
            _add_dropped(q, {taken[0]: cut.bytes})
            return Chunk(fragments=cut.fragments, bytes=cut.bytes, done=False)
        q(f"DELETE FROM tasks WHERE id IN ({marks(taken)})", taken)
        chunk.tasks = len(taken)
        return chunk


@dataclass(frozen=True, slots=True)
class TruncateTasks:
    task_ids: tuple[str, ...]
    max_bytes: int
    rows: int
    bytes: int

    def run(self, q: Query, d: Dialect) -> Chunk:
        chunk, dropped, stop = Chunk(), dict[str, int](), len(self.task_ids)
        totals: dict[str, int] = {}
        for index, task_id in enumerate(self.task_ids):
            rows, nbytes = self.rows - chunk.fragments, self.bytes - chunk.bytes
            if rows <= 0 or nbytes <= 0:
                stop = index
                break
            if index % _SIZES_BATCH == 0:
                totals = _finished_sizes(q, d, self.task_ids[index:index + _SIZES_BATCH])
            total = totals.get(task_id, 0)  # gone or unfinished: not there
            if total <= self.max_bytes:
                continue  # within the limit (another prune may have cut it meanwhile)
            cut = _cut_task(q, task_id, total - self.max_bytes, rows, nbytes)
            chunk.fragments, chunk.bytes = chunk.fragments + cut.fragments, chunk.bytes + cut.bytes
            chunk.touched.add(task_id)
            dropped[task_id] = cut.bytes
            if not cut.complete:
                stop = index
                break
        _add_dropped(q, dropped)
        if stop < len(self.task_ids):
            return replace(chunk, done=False, remaining=self.task_ids[stop:])
        return chunk


_SIZES_BATCH = 32
"""Tasks whose size one statement of :class:`TruncateTasks` reads."""


def _finished_sizes(q: Query, d: Dialect, task_ids: Sequence[str]) -> dict[str, int]:
    """The output size now of those of ``task_ids`` that exist, have finished and have output."""
    return {task_id: int(total) for task_id, total in q(
        "SELECT t.id, sum(length(f.data)) FROM tasks AS t"
        f" JOIN log_fragments AS f ON f.task_id = t.id WHERE t.id IN ({marks(task_ids)})"
        f" AND {d.finished} GROUP BY t.id", task_ids)}


@dataclass(frozen=True, slots=True)
class DropOldest:
    """Whole fragments, oldest first, up to ``through`` (the newest one the total rule takes,
    from :func:`total_cutoff`) and until ``excess`` bytes are gone."""

    excess: int
    through: Position
    keep_last: int
    rows: int
    bytes: int

    def run(self, q: Query, d: Dialect) -> Chunk:
        found = q(f"{d.oldest_fragments} AND {d.through} ORDER BY {d.order} LIMIT ?",
                  (keep_cutoff(q, d, self.keep_last), *self.through, self.rows))
        width = len(d.key)
        keys, per_task, covered = pick_oldest(
            ((tuple(row[:width]), row[width], row[-1]) for row in found), self.excess,
            self.bytes)
        if keys:
            q(*d.delete_fragments(keys))
        _add_dropped(q, per_task)
        done = covered or (len(found) < self.rows and len(keys) == len(found))
        return Chunk(fragments=len(keys), bytes=sum(per_task.values()),
                      touched=set(per_task), done=done)


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


# -- reads shared by chunks, the prune loop and the dry run ---------------------------------


def keep_cutoff(q: Query, d: Dialect, keep_last: int) -> float:
    """Finished tasks created at or after this time are the newest ``keep_last``."""
    if keep_last == 0:
        return math.inf
    rows = q(f"SELECT t.created_at FROM tasks AS t WHERE {d.finished_filter}"
             " ORDER BY t.created_at DESC LIMIT 1 OFFSET ?", (keep_last - 1,))
    return float(rows[0][0]) if rows else -math.inf


def oversized(q: Query, d: Dialect, max_bytes: int, where: str = "",
              params: Sequence[Any] = ()) -> list[str]:
    """Finished tasks storing more than ``max_bytes`` of output (a scan of all fragments);
    ``where`` narrows them further (on ``t``, with ``params``)."""
    return [row[0] for row in q(f"{_oversized(d, where)} ORDER BY t.id", (max_bytes, *params))]


def oversized_sizes(q: Query, d: Dialect, max_bytes: int, where: str = "",
                    params: Sequence[Any] = ()) -> dict[str, list[tuple[int, int]]]:
    """The same tasks' fragments, ``(seq, size)`` oldest first, in one read."""
    sizes: dict[str, list[tuple[int, int]]] = {}
    for task_id, seq, size in q(
            "SELECT task_id, seq, length(data) FROM log_fragments"
            f" WHERE task_id IN ({_oversized(d, where)}) ORDER BY task_id, seq",
            (max_bytes, *params)):
        sizes.setdefault(task_id, []).append((seq, size))
    return sizes


def _oversized(d: Dialect, where: str) -> str:
    return ("SELECT t.id FROM tasks AS t JOIN (SELECT task_id FROM log_fragments"
            " GROUP BY task_id HAVING sum(length(data)) > ?) AS s ON s.task_id = t.id"
            f" WHERE {d.finished}{where}")


def total_bytes(q: Query) -> int:
    return int(q("SELECT coalesce(sum(length(data)), 0) FROM log_fragments", ())[0][0])


Fragment = tuple[tuple[Any, ...], str, int, float, int]
"""A fragment as :func:`walk_oldest` yields it: (key, task id, seq, at, size)."""


def walk_oldest(q: Query, d: Dialect, keep: float, survives: str = "",
                aged: Sequence[Any] = ()) -> Iterator[Fragment]:
    """Every fragment the total rule may take, oldest first, in pages of 1000."""
    width, after = len(d.key), d.start
    while True:
        page = q(f"{d.oldest_fragments}{survives} AND {d.after} ORDER BY {d.order} LIMIT 1000",
                 (keep, *aged, *after))
        for row in page:
            key, (task_id, seq, at, size) = tuple(row[:width]), row[width:]
            yield key, task_id, seq, at, size
        if len(page) < 1000:
            return
        last = page[-1]
        after = (last[width + 2], *last[:width])


def total_cutoff(q: Query, d: Dialect, max_total: int, keep_last: int
                 ) -> tuple[int, Position] | None:
    """What the total rule deletes now: (excess bytes, position of the newest fragment that
    goes), or None when the output is within ``max_total`` or nothing may go.

    The oldest fragments go while what remains is over the limit, so a fragment goes exactly
    when it, the fragments after it and the protected output are together over the limit: a
    property of the fragments that stay, which deleting the older ones does not change. Two
    prunes planning a moment apart (one of them partway through) find the same last fragment,
    and between them delete what one would have.
    """
    excess = total_bytes(q) - max_total
    if excess <= 0:
        return None
    covered, last = 0, None
    for key, _, _, at, size in walk_oldest(q, d, keep_cutoff(q, d, keep_last)):
        covered, last = covered + size, (at, *key)
        if covered >= excess:
            break
    return None if last is None else (excess, last)


def after_cuts(rows: Iterator[Fragment], cuts: dict[str, Cut]) -> Iterator[tuple[Any, str, int]]:
    """The fragments as the per-task rule leaves them: deleted ones skipped, the cut one
    shorter."""
    for key, task_id, seq, _, size in rows:
        cut = cuts.get(task_id)
        if cut is not None and cut.through is not None and seq <= cut.through:
            continue
        if cut is not None and cut.trim is not None and cut.trim[0] == seq:
            size -= cut.trim[1]
        yield key, task_id, size


