"""Write operations for SQLite, applied by the group-commit writer on its raw connection.

Kept off SQLAlchemy on purpose: a transition is two short statements, and SQLAlchemy Core adds
several times SQLite's own cost per statement (see docs/benchmarks.md). The SQL is fixed text
with ``?`` parameters; the only variable part, the list of extra columns a transition sets, is
drawn from :data:`durable.records.TASK_UPDATABLE_FIELDS`, never from input.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from durable.exceptions import CorruptTask, LeaseLost, StateConflict, StoreError
from durable.records import (
    TASK_UPDATABLE_FIELDS,
    LogFragment,
    NewTask,
    ProcessHandle,
    StepCheckpoint,
    TaskRecord,
    Transition,
    WorkerRecord,
)
from durable.rows import (
    HANDLE_COLUMNS,
    TASK_COLUMNS,
    WORKER_COLUMNS,
    corrupt_reason,
    encode_argv,
    task_from_row,
)
from durable.states import TERMINAL_STATES, TaskState
from durable.store import SpoolOffsets
from durable.transient import retried_in_thread

_INSERT_TASK = (
    "INSERT INTO tasks (id, name, kind, argv, cwd, workflow, input, queue, state, created_at,"
    " updated_at, attempt, owner, options, lease_expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
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
_UNFINISHED = "state NOT IN (" + ", ".join(f"'{s.value}'" for s in TERMINAL_STATES) + ")"
_SAVE_WORKER = (
    "INSERT OR REPLACE INTO workers (" + ", ".join(WORKER_COLUMNS) + ") VALUES ("
    + ", ".join("?" for _ in WORKER_COLUMNS) + ")"
)
_HEARTBEAT_WORKER = (
    "UPDATE workers SET heartbeat_at = ?, lease_expires_at = ?, state = ? WHERE id = ?"
)
_EXTEND_LEASES = (
    f"UPDATE tasks SET lease_expires_at = ? WHERE owner = ? AND {_UNFINISHED} AND id IN ")


@cache
def _claim_sql(queues: int) -> str:
    """Take up to ``?`` oldest unowned CREATED tasks of ``queues`` queues (placeholders)."""
    return (
        "UPDATE tasks SET owner = ?, fence = fence + 1, lease_expires_at = ?, updated_at = ?"
        " WHERE id IN (SELECT id FROM tasks WHERE state = 'CREATED' AND owner IS NULL"
        f" AND queue IN ({', '.join('?' for _ in range(queues))}) ORDER BY created_at LIMIT ?)"
        " RETURNING " + ", ".join(TASK_COLUMNS)
    )


@cache
def _update_sql(columns: tuple[str, ...], fenced: bool) -> str:
    extra = "".join(f", {column} = ?" for column in columns)
    if "owner" in columns:  # a new owner starts a new lease: a new fencing token
        extra += ", fence = fence + 1"
    guard = " AND fence = ?" if fenced else ""
    return (
        f"UPDATE tasks SET state = ?, updated_at = ?{extra}"
        f" WHERE id = ? AND state = ?{guard} RETURNING attempt, fence"
    )


def _check_fence(cur: sqlite3.Cursor, task_id: str, fence: int | None) -> None:
    """Raise LeaseLost unless the task still carries ``fence`` (None: not fenced)."""
    if fence is None:
        return
    row = cur.execute("SELECT fence FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is not None and row[0] != fence:
        raise LeaseLost(task_id)


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
             TaskState.CREATED.value, now, now, t.owner, t.options, t.lease_expires_at),
        )
        cur.execute(
            _INSERT_HISTORY, (t.id, None, TaskState.CREATED.value, now, self.reason, self.worker, 1)
        )
        return TaskRecord(
            id=t.id, kind=t.kind, name=t.name, state=TaskState.CREATED, created_at=now,
            updated_at=now, argv=t.argv, cwd=t.cwd, workflow=t.workflow, input=t.input,
            queue=t.queue, owner=t.owner, options=t.options, lease_expires_at=t.lease_expires_at,
        )


@dataclass(frozen=True, slots=True)
class MoveTask:
    task_id: str
    from_state: TaskState
    to_state: TaskState
    reason: str | None
    worker: str | None
    fields: Mapping[str, Any] = field(default_factory=dict)
    fence: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.fields) - TASK_UPDATABLE_FIELDS
        if unknown:
            raise StoreError(f"cannot set {sorted(unknown)} with a transition")

    def apply(self, cur: sqlite3.Cursor) -> tuple[Transition, int]:
        """The history row and the task's fencing token after the move."""
        now = time.time()
        columns = tuple(sorted(self.fields))
        params = (self.to_state.value, now, *(self.fields[c] for c in columns),
                  self.task_id, self.from_state.value)
        if self.fence is not None:
            params = (*params, self.fence)
        row = cur.execute(_update_sql(columns, self.fence is not None), params).fetchone()
        if row is None:
            _check_fence(cur, self.task_id, self.fence)
            found = cur.execute("SELECT state FROM tasks WHERE id = ?", (self.task_id,)).fetchone()
            raise StateConflict(self.task_id, self.from_state, found[0] if found else None)
        attempt, fence = row
        cur.execute(
            _INSERT_HISTORY,
            (self.task_id, self.from_state.value, self.to_state.value, now, self.reason,
             self.worker, attempt),
        )
        return Transition(self.task_id, self.from_state, self.to_state, now, self.reason,
                          self.worker, attempt), fence


@dataclass(frozen=True, slots=True)
class AppendLogs:
    fragments: Sequence[LogFragment]
    offsets: SpoolOffsets | None = None
    fences: Mapping[str, int] = field(default_factory=dict)
    """The fencing token of each held task the fragments belong to."""

    def apply(self, cur: sqlite3.Cursor) -> None:
        for task_id, fence in self.fences.items():
            _check_fence(cur, task_id, fence)
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
    fence: int | None = None

    def apply(self, cur: sqlite3.Cursor) -> None:
        _check_fence(cur, self.handle.task_id, self.fence)
        values = [getattr(self.handle, column) for column in HANDLE_COLUMNS]
        cur.execute(_SAVE_PROCESS, values)


@dataclass(frozen=True, slots=True)
class ClaimTasks:
    worker: str
    queues: Sequence[str]
    limit: int
    lease_seconds: float

    def apply(self, cur: sqlite3.Cursor) -> list[TaskRecord]:
        """Claim, and fail at once (in the same transaction) a claimed row that cannot be
        read: it could never run, and left queued it would be claimed again and again."""
        now = time.time()
        cur.execute(_claim_sql(len(self.queues)),
                    (self.worker, now + self.lease_seconds, now, *self.queues, self.limit))
        records = []
        for row in cur.fetchall():
            try:
                records.append(task_from_row(dict(zip(TASK_COLUMNS, row, strict=True))))
            except CorruptTask as exc:
                FailCorrupt(exc.task_id, TaskState.CREATED.value,
                            corrupt_reason(exc)).apply(cur)
        return sorted(records, key=lambda r: r.created_at)


@dataclass(frozen=True, slots=True)
class SaveWorker:
    worker: WorkerRecord

    def apply(self, cur: sqlite3.Cursor) -> None:
        w = self.worker
        values = {column: getattr(w, column) for column in WORKER_COLUMNS}
        values["queues"] = json.dumps(w.queues)
        cur.execute(_SAVE_WORKER, [values[column] for column in WORKER_COLUMNS])


@dataclass(frozen=True, slots=True)
class Heartbeat:
    worker_id: str
    state: str
    lease_seconds: float
    held: Sequence[str]

    def apply(self, cur: sqlite3.Cursor) -> dict[str, tuple[str | None, int]]:
        """Push the worker's lease and those of the unfinished tasks it still holds; the
        (owner, fence) of each task in ``held``."""
        now = time.time()
        expires = now + self.lease_seconds
        cur.execute(_HEARTBEAT_WORKER, (now, expires, self.state, self.worker_id))
        found: dict[str, tuple[str | None, int]] = {}
        for start in range(0, len(self.held), 500):
            ids = self.held[start:start + 500]
            marks = f"({', '.join('?' for _ in ids)})"
            cur.execute(_EXTEND_LEASES + marks, (expires, self.worker_id, *ids))
            for task_id, owner, fence in cur.execute(
                    f"SELECT id, owner, fence FROM tasks WHERE id IN {marks}", ids):
                found[task_id] = (owner, fence)
        return found


@dataclass(frozen=True, slots=True)
class ReleaseLease:
    """Give up a held task: no owner, lease expired, a new fencing token, so any worker may
    take it over at once and the one that let go can write nothing more for it."""

    task_id: str
    fence: int

    def apply(self, cur: sqlite3.Cursor) -> None:
        cur.execute("UPDATE tasks SET owner = NULL, lease_expires_at = ?, fence = fence + 1"
                    " WHERE id = ? AND fence = ?", (time.time(), self.task_id, self.fence))


@dataclass(frozen=True, slots=True)
class SaveStep:
    step: StepCheckpoint
    fence: int | None = None

    def apply(self, cur: sqlite3.Cursor) -> None:
        _check_fence(cur, self.step.task_id, self.fence)
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


WriteOp = (CreateTask | MoveTask | AppendLogs | ClaimTasks | SaveStep | SaveProcess
           | FailCorrupt | SaveWorker | Heartbeat | ReleaseLease)


_TRANSIENT_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR")
"""Another process holding the lock past ``busy_timeout``, a full disk (or ``max_page_count``
reached), an I/O error: the batch was rolled back whole and may well commit later."""


def is_transient(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, StoreError) else exc
    return isinstance(cause, sqlite3.Error) and getattr(
        cause, "sqlite_errorname", "").startswith(_TRANSIENT_ERRORS)


def apply_batch(conn: sqlite3.Connection, ops: Sequence[WriteOp],
                retry_seconds: float = 0.0) -> list[Any]:
    """Run ``ops`` in one transaction and commit once; one outcome per op.

    With more than one op, each runs inside a savepoint so a failing op (a guarded update that
    found another state, a constraint violation) is undone alone and the others still commit.
    A batch that failed as a whole over something transient left nothing behind (it was
    rolled back) and is run again for up to ``retry_seconds``; meanwhile new writes queue up
    behind it.
    """
    return retried_in_thread(lambda: _apply_once(conn, ops), is_transient, "write",
                             retry_seconds)


def _apply_once(conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> list[Any]:
    cur = conn.cursor()
    outcomes: list[Any] = []
    single = len(ops) == 1
    try:
        cur.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for another process's lock
    except sqlite3.OperationalError as exc:
        raise StoreError(f"commit failed: {exc}") from exc
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
