"""The writes of the PostgreSQL store, as SQLAlchemy Core statements on one connection.

Each function runs inside the transaction :meth:`durable.postgres.PostgresStore._write` opened
and commits with it; its semantics are those of the SQLite operation of the same name in
:mod:`durable.sqlite_writes`, where the contract is spelled out statement by statement. What
differs is concurrency: here writers on other connections (other workers, other machines) run
at the same time, so a guarded update that waited for another writer's row lock re-checks its
``WHERE`` against the committed row (READ COMMITTED), and a claim skips rows another claimer
has locked instead of waiting for them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as upsert
from sqlalchemy.ext.asyncio import AsyncConnection

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
from durable.rows import HANDLE_COLUMNS, WORKER_COLUMNS, corrupt_reason, encode_argv, task_from_row
from durable.schema import (
    log_fragments,
    process_handles,
    step_checkpoints,
    task_states,
    tasks,
    workers,
)
from durable.states import TERMINAL_STATES, TaskState
from durable.store import SpoolOffsets


async def _add_history(conn: AsyncConnection, row: Transition) -> None:
    await conn.execute(insert(task_states).values(
        task_id=row.task_id, from_state=row.from_state.value if row.from_state else None,
        to_state=row.to_state.value, at=row.at, reason=row.reason, worker=row.worker,
        attempt=row.attempt))


async def create_task(conn: AsyncConnection, task: NewTask, reason: str | None,
                      worker: str | None) -> TaskRecord:
    now = time.time()
    inserted = await conn.execute(insert(tasks).values(
        id=task.id, name=task.name, kind=task.kind, argv=encode_argv(task.argv), cwd=task.cwd,
        workflow=task.workflow, input=task.input, queue=task.queue,
        state=TaskState.CREATED.value, created_at=now, updated_at=now, attempt=1,
        owner=task.owner, options=task.options, lease_expires_at=task.lease_expires_at,
    ).returning(*tasks.c))
    record = task_from_row(dict(inserted.mappings().one()))
    await _add_history(conn, Transition(task.id, None, TaskState.CREATED, now, reason, worker,
                                        record.attempt))
    return record


async def _check_fence(conn: AsyncConnection, task_id: str, fence: int | None) -> None:
    """Raise LeaseLost unless the task still carries ``fence`` (None: not fenced).

    ``FOR SHARE`` holds off a concurrent takeover (an UPDATE of the row) until this transaction
    ends, and waits for one in flight, so a write never lands behind a takeover it raced."""
    if fence is None:
        return
    found = (await conn.execute(
        select(tasks.c.fence).where(tasks.c.id == task_id).with_for_update(read=True))).scalar()
    if found is not None and found != fence:
        raise LeaseLost(task_id)


async def move_task(conn: AsyncConnection, task_id: str, from_state: TaskState,
                    to_state: TaskState, reason: str | None, worker: str | None,
                    fields: Mapping[str, Any], fence: int | None) -> tuple[Transition, int]:
    unknown = set(fields) - TASK_UPDATABLE_FIELDS
    if unknown:
        raise StoreError(f"cannot set {sorted(unknown)} with a transition")
    now = time.time()
    values: dict[str, Any] = {"state": to_state.value, "updated_at": now, **fields}
    if "owner" in fields:  # a new owner starts a new lease: a new fencing token
        values["fence"] = tasks.c.fence + 1
    statement = update(tasks).where(tasks.c.id == task_id, tasks.c.state == from_state.value)
    if fence is not None:
        statement = statement.where(tasks.c.fence == fence)
    moved = (await conn.execute(
        statement.values(**values).returning(tasks.c.attempt, tasks.c.fence))).first()
    if moved is None:
        await _check_fence(conn, task_id, fence)
        found = (await conn.execute(select(tasks.c.state).where(tasks.c.id == task_id))).scalar()
        raise StateConflict(task_id, from_state, found)
    row = Transition(task_id, from_state, to_state, now, reason, worker, moved.attempt)
    await _add_history(conn, row)
    return row, moved.fence


async def append_logs(conn: AsyncConnection, fragments: Sequence[LogFragment],
                      offsets: SpoolOffsets | None, fences: Mapping[str, int]) -> None:
    for task_id, fence in fences.items():
        await _check_fence(conn, task_id, fence)
    if fragments:
        # One multi-row statement, not executemany: a worker paused (SIGSTOP) mid-executemany
        # leaves its session "active", waiting for the next row, and so never reaped by the
        # idle-in-transaction timeout while its row locks stall the workers taking over.
        await conn.execute(insert(log_fragments).values([
            {"task_id": f.task_id, "seq": f.seq, "stream": int(f.stream), "at": f.at,
             "data": f.data} for f in fragments]))
    if offsets is not None:
        task_id, stdout_offset, stderr_offset = offsets
        await conn.execute(update(process_handles)
                           .where(process_handles.c.task_id == task_id)
                           .values(stdout_offset=stdout_offset, stderr_offset=stderr_offset))


async def save_process(conn: AsyncConnection, handle: ProcessHandle, fence: int | None
                       ) -> None:
    await _check_fence(conn, handle.task_id, fence)
    statement = upsert(process_handles).values(
        {column: getattr(handle, column) for column in HANDLE_COLUMNS})
    await conn.execute(statement.on_conflict_do_update(
        index_elements=[process_handles.c.task_id],
        set_={c: statement.excluded[c] for c in HANDLE_COLUMNS if c != "task_id"}))


async def claim(conn: AsyncConnection, worker: str, queues: Sequence[str], limit: int,
                lease_seconds: float) -> list[TaskRecord]:
    """Skip the rows other claimers hold locked instead of waiting for them."""
    oldest = (
        select(tasks.c.id)
        .where(tasks.c.state == TaskState.CREATED.value, tasks.c.owner.is_(None),
               tasks.c.queue.in_(list(queues)))
        .order_by(tasks.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    now = time.time()
    claimed = await conn.execute(
        update(tasks).where(tasks.c.id.in_(oldest.scalar_subquery()))
        .values(owner=worker, fence=tasks.c.fence + 1, lease_expires_at=now + lease_seconds,
                updated_at=now)
        .returning(*tasks.c))
    records = []
    for row in claimed.mappings():
        try:
            records.append(task_from_row(dict(row)))
        except CorruptTask as exc:  # it could never run: fail it now, not claim it forever
            await fail_corrupt(conn, exc.task_id, TaskState.CREATED.value, corrupt_reason(exc))
    return sorted(records, key=lambda r: r.created_at)


async def heartbeat(conn: AsyncConnection, worker_id: str, state: str, lease_seconds: float,
                    held: Sequence[str]) -> dict[str, tuple[str | None, int]]:
    now = time.time()
    expires = now + lease_seconds
    await conn.execute(update(workers).where(workers.c.id == worker_id)
                       .values(heartbeat_at=now, lease_expires_at=expires, state=state))
    if not held:
        return {}
    await conn.execute(
        update(tasks)
        .where(tasks.c.owner == worker_id, tasks.c.id.in_(list(held)),
               tasks.c.state.not_in([s.value for s in TERMINAL_STATES]))
        .values(lease_expires_at=expires))
    rows = await conn.execute(select(tasks.c.id, tasks.c.owner, tasks.c.fence)
                              .where(tasks.c.id.in_(list(held))))
    return {row.id: (row.owner, row.fence) for row in rows}


async def release_lease(conn: AsyncConnection, task_id: str, fence: int) -> None:
    await conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.fence == fence)
                       .values(owner=None, lease_expires_at=time.time(),
                               fence=tasks.c.fence + 1))


async def save_worker(conn: AsyncConnection, worker: WorkerRecord) -> None:
    values = {column: getattr(worker, column) for column in WORKER_COLUMNS}
    values["queues"] = json.dumps(worker.queues)
    statement = upsert(workers).values(values)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=[workers.c.id],
        set_={c: statement.excluded[c] for c in WORKER_COLUMNS if c != "id"}))


async def save_step(conn: AsyncConnection, step: StepCheckpoint, fence: int | None) -> None:
    await _check_fence(conn, step.task_id, fence)
    statement = upsert(step_checkpoints).values(
        task_id=step.task_id, seq=step.seq, name=step.name, status=step.status,
        result=step.result, error=step.error, attempts=step.attempts,
        started_at=step.started_at, finished_at=step.finished_at)
    replaced = ("name", "status", "result", "error", "attempts", "started_at", "finished_at")
    await conn.execute(statement.on_conflict_do_update(
        index_elements=[step_checkpoints.c.task_id, step_checkpoints.c.seq],
        set_={column: statement.excluded[column] for column in replaced}))


async def fail_corrupt(conn: AsyncConnection, task_id: str, found_state: str,
                       reason: str) -> None:
    now = time.time()
    attempt = (await conn.execute(
        update(tasks)
        .where(tasks.c.id == task_id, tasks.c.state == found_state)
        .values(state=TaskState.FAILED.value, updated_at=now, finished_at=now, error=reason)
        .returning(tasks.c.attempt)
    )).scalar()
    if attempt is None:
        raise StateConflict(task_id, found_state, None)
    await _add_history(conn, Transition(task_id, None, TaskState.FAILED, now, reason, None,
                                        attempt))
