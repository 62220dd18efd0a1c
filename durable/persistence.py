"""PersistenceManager: the SQL store (SQLite today), and the factory that picks a store.

Connection strategy for SQLite: one database file in WAL mode, where any number of readers run
alongside exactly one writer. So every write goes through one :class:`GroupCommitWriter` that
owns one raw ``sqlite3`` connection on one dedicated thread, and commits all that is queued as a
single transaction; readers use a small pool of the SQLAlchemy async engine (aiosqlite), which
never blocks the writer and never sees an uncommitted row. Because there is a single writer in
the process, SQLite's database lock is never contended between our own connections (other
processes wait up to ``busy_timeout``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from durable import migrate
from durable.engine import ConnectionOptions, connect_sqlite, create_engine
from durable.exceptions import DatabaseUnavailable, StoreError, TaskNotFound
from durable.memory import MemoryStore
from durable.records import (
    LogFragment,
    NewTask,
    ProcessHandle,
    StepCheckpoint,
    Stream,
    TaskRecord,
    TaskRef,
    Transition,
)
from durable.rows import (
    fragment_from_row,
    handle_from_row,
    step_from_row,
    task_from_row,
    transition_from_row,
)
from durable.schema import log_fragments, process_handles, step_checkpoints, task_states, tasks
from durable.sqlite_writes import (
    AppendLogs,
    ClaimTask,
    CreateTask,
    FailCorrupt,
    MoveTask,
    SaveProcess,
    SaveStep,
    WriteOp,
    apply_batch,
)
from durable.states import TERMINAL_STATES, TaskState
from durable.store import (
    TASK_ID_LENGTH,
    SpoolOffsets,
    Store,
    glob_to_like,
    is_valid_id_prefix,
    resolve_prefix,
)
from durable.writer import GroupCommitWriter

if TYPE_CHECKING:
    from config import OneshotSettings


IN_LIST_CHUNK = 500
"""Ids per ``IN (...)`` list: well under SQLite's bound-parameter limit."""


class PersistenceManager:
    """The durable store over SQLite. Implements :class:`durable.store.Store`."""

    def __init__(
        self,
        options: ConnectionOptions,
        *,
        auto_upgrade: bool = True,
        max_batch: int = 2000,
        max_wait: float = 0.0,
    ) -> None:
        if not options.is_sqlite:
            raise DatabaseUnavailable(
                options.url, "only SQLite is supported by this version (PostgreSQL: issue 6)"
            )
        self.options = options
        self._auto_upgrade = auto_upgrade
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._engine: AsyncEngine | None = None
        self._conn: sqlite3.Connection | None = None
        self._writer: GroupCommitWriter[WriteOp] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    @property
    def writer(self) -> GroupCommitWriter[WriteOp]:
        if self._writer is None:
            raise StoreError("the store is not open")
        return self._writer

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = create_engine(self.options)
        try:
            await self._ensure_schema(engine)
            conn = connect_sqlite(self.options)
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._conn = engine, conn
        self._writer = GroupCommitWriter(
            lambda ops: apply_batch(conn, ops), max_batch=self._max_batch, max_wait=self._max_wait
        )
        self._writer.start()

    async def _ensure_schema(self, engine: AsyncEngine) -> None:
        try:
            if self._auto_upgrade:
                await migrate.ensure_head(engine)
                return
            current = await migrate.current_revision(engine)
        except DBAPIError as exc:
            raise DatabaseUnavailable(self.options.url, str(exc.orig)) from exc
        if current != migrate.head_revision():
            raise StoreError(
                f"database is at revision {current or 'none'}, this Oneshot needs "
                f"{migrate.head_revision()}: run `oneshot db upgrade`"
            )

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def __aenter__(self) -> PersistenceManager:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- writes: each returns after its commit -------------------------------------------

    async def create_task(
        self, task: NewTask, *, reason: str | None = None, worker: str | None = None
    ) -> TaskRecord:
        record: TaskRecord = await self.writer.submit(CreateTask(task, reason, worker))
        return record

    async def transition(
        self,
        task_id: str,
        from_state: TaskState,
        to_state: TaskState,
        *,
        reason: str | None = None,
        worker: str | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> Transition:
        op = MoveTask(task_id, from_state, to_state, reason, worker, dict(fields or {}))
        row: Transition = await self.writer.submit(op)
        return row

    async def append_logs(
        self, fragments: Sequence[LogFragment], *, offsets: SpoolOffsets | None = None
    ) -> None:
        if fragments or offsets is not None:
            await self.writer.submit(AppendLogs(list(fragments), offsets))

    async def save_process(self, handle: ProcessHandle) -> None:
        await self.writer.submit(SaveProcess(handle))

    async def claim_next(self, *, worker: str, queue: str = "default") -> TaskRecord | None:
        record: TaskRecord | None = await self.writer.submit(ClaimTask(worker, queue))
        return record

    async def save_step(self, checkpoint: StepCheckpoint) -> None:
        await self.writer.submit(SaveStep(checkpoint))

    # -- reads ----------------------------------------------------------------------------

    async def _fetch(self, statement: Any) -> list[Mapping[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(statement)
            return [dict(row) for row in result.mappings()]

    async def get_task(self, task_id: str) -> TaskRecord:
        if not is_valid_id_prefix(task_id):
            raise TaskNotFound(task_id)
        if len(task_id) == TASK_ID_LENGTH:
            statement = select(tasks).where(tasks.c.id == task_id)
        else:  # a prefix, as a range on the primary key (LIKE would scan the table)
            statement = (select(tasks)
                         .where(tasks.c.id >= task_id, tasks.c.id < task_id + "g").limit(2))
        rows = {row["id"]: row for row in await self._fetch(statement)}
        return task_from_row(rows[resolve_prefix(task_id, list(rows))])

    async def list_tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        limit: int | None = None,
        name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        oldest_first: bool = False,
    ) -> list[TaskRecord]:
        order = tasks.c.created_at.asc() if oldest_first else tasks.c.created_at.desc()
        statement = select(tasks).order_by(order)
        if states is not None:
            statement = statement.where(tasks.c.state.in_([s.value for s in states]))
        if name is not None:
            statement = statement.where(tasks.c.name.like(glob_to_like(name), escape="\\"))
        if since is not None:
            statement = statement.where(tasks.c.created_at >= since)
        if until is not None:
            statement = statement.where(tasks.c.created_at < until)
        if limit is not None:
            statement = statement.limit(limit)
        return [task_from_row(row) for row in await self._fetch(statement)]

    async def history(self, task_id: str) -> list[Transition]:
        statement = (
            select(task_states)
            .where(task_states.c.task_id == task_id)
            .order_by(task_states.c.at, task_states.c.id)
        )
        return [transition_from_row(row) for row in await self._fetch(statement)]

    async def read_logs(
        self,
        task_id: str,
        *,
        streams: Collection[Stream] | None = None,
        after_seq: int = -1,
        limit: int | None = None,
        tail: int | None = None,
        since: float | None = None,
    ) -> list[LogFragment]:
        statement = select(log_fragments).where(log_fragments.c.task_id == task_id)
        if streams is not None:
            statement = statement.where(log_fragments.c.stream.in_([int(s) for s in streams]))
        if since is not None:
            statement = statement.where(log_fragments.c.at >= since)
        if tail is not None:
            statement = statement.order_by(log_fragments.c.seq.desc()).limit(tail)
            rows = await self._fetch(statement)
            return [fragment_from_row(row) for row in reversed(rows)]
        statement = statement.where(log_fragments.c.seq > after_seq).order_by(log_fragments.c.seq)
        if limit is not None:
            statement = statement.limit(limit)
        return [fragment_from_row(row) for row in await self._fetch(statement)]

    async def log_size(self, task_id: str) -> tuple[int, int]:
        statement = select(
            func.count(), func.coalesce(func.sum(func.length(log_fragments.c.data)), 0)
        ).where(log_fragments.c.task_id == task_id)
        async with self.engine.connect() as conn:
            count, total = (await conn.execute(statement)).one()
        return int(count), int(total)

    async def unfinished_tasks(self) -> list[TaskRef]:
        terminal = [state.value for state in TERMINAL_STATES]
        statement = (
            select(tasks).where(tasks.c.state.not_in(terminal)).order_by(tasks.c.created_at)
        )
        return [_task_ref(row) for row in await self._fetch(statement)]

    async def fail_corrupt(self, task_id: str, found_state: str, reason: str) -> None:
        await self.writer.submit(FailCorrupt(task_id, found_state, reason))

    async def recovery_facts(self, task_ids: Sequence[str]
                             ) -> tuple[dict[str, ProcessHandle], dict[str, int]]:
        handles: dict[str, ProcessHandle] = {}
        seqs: dict[str, int] = {}
        for start in range(0, len(task_ids), IN_LIST_CHUNK):
            ids = list(task_ids[start:start + IN_LIST_CHUNK])
            for row in await self._fetch(
                    select(process_handles).where(process_handles.c.task_id.in_(ids))):
                handles[row["task_id"]] = handle_from_row(row)
            last = (select(log_fragments.c.task_id, func.max(log_fragments.c.seq).label("seq"))
                    .where(log_fragments.c.task_id.in_(ids))
                    .group_by(log_fragments.c.task_id))
            for row in await self._fetch(last):
                seqs[row["task_id"]] = int(row["seq"]) + 1
        return handles, seqs

    async def get_process(self, task_id: str) -> ProcessHandle | None:
        statement = select(process_handles).where(process_handles.c.task_id == task_id)
        rows = await self._fetch(statement)
        return handle_from_row(rows[0]) if rows else None

    async def load_steps(self, task_id: str) -> list[StepCheckpoint]:
        statement = (
            select(step_checkpoints)
            .where(step_checkpoints.c.task_id == task_id)
            .order_by(step_checkpoints.c.seq)
        )
        return [step_from_row(row) for row in await self._fetch(statement)]


def _task_ref(row: Mapping[str, Any]) -> TaskRef:
    ref = TaskRef(row["id"], row["kind"], row["state"], row["owner"])
    try:
        return replace(ref, record=task_from_row(row))
    except (ValueError, KeyError, TypeError) as exc:
        return replace(ref, problem=str(exc))


def store_from_settings(settings: OneshotSettings) -> Store:
    """The store the settings ask for: SQL when persistence is on, else in memory."""
    if not settings.persistence.enabled:
        return MemoryStore()
    options = ConnectionOptions(
        url=settings.database.url,
        synchronous=settings.database.synchronous,
        busy_timeout_ms=settings.database.busy_timeout_ms,
    )
    return PersistenceManager(
        options,
        auto_upgrade=settings.database.auto_upgrade,
        max_batch=settings.database.commit_batch_max,
        max_wait=settings.database.commit_max_wait_ms / 1000.0,
    )
