"""PersistenceManager: the SQLite store, and the factory that picks a store.

Connection strategy for SQLite: one database file in WAL mode, where any number of readers run
alongside exactly one writer. So every write goes through one :class:`GroupCommitWriter` that
owns one raw ``sqlite3`` connection on one dedicated thread, and commits all that is queued as a
single transaction; readers use a small pool of the SQLAlchemy async engine (aiosqlite), which
never blocks the writer and never sees an uncommitted row. Because there is a single writer in
the process, SQLite's database lock is never contended between our own connections (other
processes wait up to ``busy_timeout``). The reads are shared with the PostgreSQL store
(:class:`durable.sql_reads.SqlReads`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from durable import migrate
from durable.engine import ConnectionOptions, connect_sqlite, create_engine
from durable.exceptions import DatabaseUnavailable, StoreError
from durable.fenced import FencedWrites
from durable.memory import MemoryStore
from durable.postgres import PostgresStore
from durable.records import (
    LogFragment,
    NewTask,
    ProcessHandle,
    StepCheckpoint,
    TaskRecord,
    Transition,
    WorkerRecord,
    WorkerState,
)
from durable.sql_reads import SqlReads
from durable.sqlite_writes import (
    AppendLogs,
    ClaimTasks,
    CreateTask,
    FailCorrupt,
    Heartbeat,
    MoveTask,
    ReleaseLease,
    SaveProcess,
    SaveStep,
    SaveWorker,
    WriteOp,
    apply_batch,
)
from durable.states import TaskState
from durable.store import SpoolOffsets, Store
from durable.writer import GroupCommitWriter

if TYPE_CHECKING:
    from config import OneshotSettings


class PersistenceManager(SqlReads, FencedWrites):
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
                options.display_url, "PersistenceManager is the SQLite store (PostgreSQL: "
                "PostgresStore, or store_from_settings)"
            )
        self.options = options
        self._auto_upgrade = auto_upgrade
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._engine: AsyncEngine | None = None
        self._conn: sqlite3.Connection | None = None
        self._writer: GroupCommitWriter[WriteOp] | None = None
        FencedWrites.__init__(self)

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
            await migrate.ensure_ready(engine, auto_upgrade=self._auto_upgrade)
            conn = connect_sqlite(self.options)
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._conn = engine, conn
        self._writer = GroupCommitWriter(
            lambda ops: apply_batch(conn, ops, self.options.retry_seconds),
            max_batch=self._max_batch, max_wait=self._max_wait
        )
        self._writer.start()

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

    async def _submit(self, op: WriteOp) -> Any:
        return await self.writer.submit(op)

    async def _create(self, task: NewTask, reason: str | None, worker: str | None
                      ) -> TaskRecord:
        record: TaskRecord = await self._submit(CreateTask(task, reason, worker))
        return record

    async def _move(self, task_id: str, from_state: TaskState, to_state: TaskState,
                    reason: str | None, worker: str | None, fields: Mapping[str, Any],
                    fence: int | None) -> tuple[Transition, int]:
        moved: tuple[Transition, int] = await self._submit(
            MoveTask(task_id, from_state, to_state, reason, worker, fields, fence))
        return moved

    async def _append(self, fragments: Sequence[LogFragment], offsets: SpoolOffsets | None,
                      fences: Mapping[str, int]) -> None:
        await self._submit(AppendLogs(fragments, offsets, fences))

    async def _save_process(self, handle: ProcessHandle, fence: int | None) -> None:
        await self._submit(SaveProcess(handle, fence))

    async def _save_step(self, checkpoint: StepCheckpoint, fence: int | None) -> None:
        await self._submit(SaveStep(checkpoint, fence))

    async def _claim(self, worker: str, queues: Sequence[str], limit: int,
                     lease_seconds: float) -> list[TaskRecord]:
        records: list[TaskRecord] = await self._submit(
            ClaimTasks(worker, queues, limit, lease_seconds))
        return records

    async def _heartbeat(self, worker_id: str, state: WorkerState, lease_seconds: float,
                         held: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        found: dict[str, tuple[str | None, int]] = await self._submit(
            Heartbeat(worker_id, state, lease_seconds, tuple(held)))
        return found

    async def _release(self, task_id: str, fence: int) -> None:
        await self._submit(ReleaseLease(task_id, fence))

    async def save_worker(self, worker: WorkerRecord) -> None:
        await self._submit(SaveWorker(worker))

    async def fail_corrupt(self, task_id: str, found_state: str, reason: str) -> None:
        await self.writer.submit(FailCorrupt(task_id, found_state, reason))


def store_from_settings(settings: OneshotSettings) -> Store:
    """The store the settings ask for: SQLite or PostgreSQL by the database URL when
    persistence is on, else in memory."""
    if not settings.persistence.enabled:
        return MemoryStore()
    options = ConnectionOptions.from_settings(settings.database)
    if options.is_postgresql:
        return PostgresStore(options, auto_upgrade=settings.database.auto_upgrade)
    return PersistenceManager(
        options,
        auto_upgrade=settings.database.auto_upgrade,
        max_batch=settings.database.commit_batch_max,
        max_wait=settings.database.commit_max_wait_ms / 1000.0,
    )
