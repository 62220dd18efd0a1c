"""Write operations for SQLite, applied by the group-commit writer on its raw connection.

Kept off SQLAlchemy on purpose: a transition is two short statements, and SQLAlchemy Core adds
several times SQLite's own cost per statement (see docs/benchmarks.md). The SQL is fixed text
with ``?`` parameters; the only variable part, the list of extra columns a transition sets, is
drawn from :data:`durable.records.TASK_UPDATABLE_FIELDS`, never from input.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from durable.exceptions import StateConflict, StoreError
from durable.records import (
    TASK_UPDATABLE_FIELDS,
    LogFragment,
    NewTask,
    ProcessHandle,
    StepCheckpoint,
    TaskRecord,
    Transition,
)
from durable.rows import HANDLE_COLUMNS, TASK_COLUMNS, encode_argv, task_from_row
from durable.states import TaskState
from durable.store import SpoolOffsets

_INSERT_TASK = (
    "INSERT INTO tasks (id, name, kind, argv, cwd, workflow, input, queue, state, created_at,"
    " updated_at, attempt, owner, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
)
_INSERT_HISTORY = (
    "INSERT INTO task_states (task_id, from_state, to_state, at, reason, worker, attempt)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_FRAGMENT = (
    "INSERT INTO log_fragments (task_id, seq, stream, at, data) VALUES (?, ?, ?, ?, ?)"
)
_SAVE_STEP = (
    "INSERT INTO step_checkpoints (task_id, seq, name, status, result, error, attempts,"
    " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (task_id, seq) DO UPDATE SET name = excluded.name, status = excluded.status,"
    " result = excluded.result, error = excluded.error, attempts = excluded.attempts,"
    " started_at = excluded.started_at, finished_at = excluded.finished_at"
)
_SAVE_PROCESS = (
    "INSERT OR REPLACE INTO process_handles (" + ", ".join(HANDLE_COLUMNS) + ") VALUES ("
    + ", ".join("?" for _ in HANDLE_COLUMNS) + ")"
)
_UPDATE_OFFSETS = (
    "UPDATE process_handles SET stdout_offset = ?, stderr_offset = ? WHERE task_id = ?"
)
_CLAIM = (
    "UPDATE tasks SET owner = ?, updated_at = ? WHERE id = ("
    " SELECT id FROM tasks WHERE state = 'CREATED' AND owner IS NULL AND queue = ?"
    " ORDER BY created_at LIMIT 1) RETURNING " + ", ".join(TASK_COLUMNS)
)


@cache
def _update_sql(columns: tuple[str, ...]) -> str:
    extra = "".join(f", {column} = ?" for column in columns)
    return (
        f"UPDATE tasks SET state = ?, updated_at = ?{extra}"
        " WHERE id = ? AND state = ? RETURNING attempt"
    )


@dataclass(frozen=True, slots=True)
class CreateTask:
    task: NewTask
    reason: str | None
    worker: str | None

    def apply(self, cur: sqlite3.Cursor) -> TaskRecord:
        t, now = self.task, time.time()
        cur.execute(
            _INSERT_TASK,
            (t.id, t.name, t.kind, encode_argv(t.argv), t.cwd, t.workflow, t.input, t.queue,
             TaskState.CREATED.value, now, now, t.owner, t.options),
        )
        cur.execute(
            _INSERT_HISTORY, (t.id, None, TaskState.CREATED.value, now, self.reason, self.worker, 1)
        )
        return TaskRecord(
            id=t.id, kind=t.kind, name=t.name, state=TaskState.CREATED, created_at=now,
            updated_at=now, argv=t.argv, cwd=t.cwd, workflow=t.workflow, input=t.input,
            queue=t.queue, owner=t.owner, options=t.options,
        )


@dataclass(frozen=True, slots=True)
class MoveTask:
    task_id: str
    from_state: TaskState
    to_state: TaskState
    reason: str | None
    worker: str | None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.fields) - TASK_UPDATABLE_FIELDS
        if unknown:
            raise StoreError(f"cannot set {sorted(unknown)} with a transition")

    def apply(self, cur: sqlite3.Cursor) -> Transition:
        now = time.time()
        columns = tuple(sorted(self.fields))
        params = (self.to_state.value, now, *(self.fields[c] for c in columns),
                  self.task_id, self.from_state.value)
        row = cur.execute(_update_sql(columns), params).fetchone()
        if row is None:
            found = cur.execute("SELECT state FROM tasks WHERE id = ?", (self.task_id,)).fetchone()
            raise StateConflict(self.task_id, self.from_state, found[0] if found else None)
        attempt = row[0]
        cur.execute(
            _INSERT_HISTORY,
            (self.task_id, self.from_state.value, self.to_state.value, now, self.reason,
             self.worker, attempt),
        )
        return Transition(self.task_id, self.from_state, self.to_state, now, self.reason,
                          self.worker, attempt)


@dataclass(frozen=True, slots=True)
class AppendLogs:
    fragments: Sequence[LogFragment]
    offsets: SpoolOffsets | None = None

    def apply(self, cur: sqlite3.Cursor) -> None:
        cur.executemany(
            _INSERT_FRAGMENT,
            [(f.task_id, f.seq, int(f.stream), f.at, f.data) for f in self.fragments],
        )
        if self.offsets is not None:
            task_id, stdout_offset, stderr_offset = self.offsets
            cur.execute(_UPDATE_OFFSETS, (stdout_offset, stderr_offset, task_id))


@dataclass(frozen=True, slots=True)
class SaveProcess:
    handle: ProcessHandle

    def apply(self, cur: sqlite3.Cursor) -> None:
        values = [getattr(self.handle, column) for column in HANDLE_COLUMNS]
        cur.execute(_SAVE_PROCESS, values)


@dataclass(frozen=True, slots=True)
class ClaimTask:
    worker: str
    queue: str

    def apply(self, cur: sqlite3.Cursor) -> TaskRecord | None:
        cur.execute(_CLAIM, (self.worker, time.time(), self.queue))
        row = cur.fetchone()
        if row is None:
            return None
        return task_from_row(dict(zip(TASK_COLUMNS, row, strict=True)))


@dataclass(frozen=True, slots=True)
class SaveStep:
    step: StepCheckpoint

    def apply(self, cur: sqlite3.Cursor) -> None:
        s = self.step
        cur.execute(
            _SAVE_STEP,
            (s.task_id, s.seq, s.name, s.status, s.result, s.error, s.attempts, s.started_at,
             s.finished_at),
        )


@dataclass(frozen=True, slots=True)
class FailCorrupt:
    task_id: str
    found_state: str
    reason: str

    def apply(self, cur: sqlite3.Cursor) -> None:
        now = time.time()
        row = cur.execute(
            "UPDATE tasks SET state = 'FAILED', updated_at = ?, finished_at = ?, error = ?"
            " WHERE id = ? AND state = ? RETURNING attempt",
            (now, now, self.reason, self.task_id, self.found_state),
        ).fetchone()
        if row is None:
            raise StateConflict(self.task_id, self.found_state, None)
        cur.execute(_INSERT_HISTORY, (self.task_id, None, TaskState.FAILED.value, now,
                                      self.reason, None, row[0]))


WriteOp = CreateTask | MoveTask | AppendLogs | ClaimTask | SaveStep | SaveProcess | FailCorrupt


def apply_batch(conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> list[Any]:
    """Run ``ops`` in one transaction and commit once; one outcome per op.

    With more than one op, each runs inside a savepoint so a failing op (a guarded update that
    found another state, a constraint violation) is undone alone and the others still commit.
    """
    cur = conn.cursor()
    outcomes: list[Any] = []
    single = len(ops) == 1
    cur.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            if not single:
                cur.execute("SAVEPOINT op")
            try:
                outcomes.append(op.apply(cur))
            except (sqlite3.IntegrityError, StateConflict, StoreError) as exc:
                if single:
                    cur.execute("ROLLBACK")
                    return [_as_store_error(exc)]
                cur.execute("ROLLBACK TO op")
                outcomes.append(_as_store_error(exc))
            if not single:
                cur.execute("RELEASE op")
        cur.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.rollback()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"commit failed: {exc}") from exc
        raise
    return outcomes


def _as_store_error(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.Error):
        error = StoreError(f"write rejected: {exc}")
        error.__cause__ = exc
        return error
    return exc
