"""PostgresStore: the durable store over PostgreSQL, for workers on several machines.

Connection strategy: a pool of asyncpg connections through SQLAlchemy's async engine, every
connection in the configured schema (``search_path``, set in :mod:`durable.engine`). Unlike
SQLite there is no group-commit writer: the server takes concurrent transactions itself, so
each write method is its own short transaction on a pooled connection, committed before the
method returns. The statements are in :mod:`durable.postgres_writes`; the reads are shared with
the SQLite store (:class:`durable.sql_reads.SqlReads`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from durable import migrate
from durable import postgres_writes as writes
from durable.engine import (
    ConnectionOptions,
    create_engine,
    driver_message,
    ended_idle_in_transaction,
    is_transient,
    server_problem,
    unsupported_options_refused,
)
from durable.exceptions import DatabaseUnavailable, StoreError
from durable.fenced import FencedWrites
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
from durable.states import TaskState
from durable.store import SpoolOffsets
from durable.transient import retried

P = ParamSpec("P")
T = TypeVar("T")


class _RolledBack(Exception):
    """A transaction that failed over a transient error before its commit: safe to rerun."""

    def __init__(self, error: DBAPIError) -> None:
        super().__init__(driver_message(error))
        self.error = error


def _rolled_back(exc: BaseException) -> bool:
    return isinstance(exc, _RolledBack)


class PostgresStore(SqlReads, FencedWrites):
    """The durable store over PostgreSQL. Implements :class:`durable.store.Store`."""

    def __init__(self, options: ConnectionOptions, *, auto_upgrade: bool = True) -> None:
        if not options.is_postgresql:
            raise DatabaseUnavailable(options.display_url, "PostgresStore needs a PostgreSQL URL")
        FencedWrites.__init__(self)
        self.options = options
        self._auto_upgrade = auto_upgrade

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = create_engine(self.options)
        try:
            with unsupported_options_refused(self.options):
                await migrate.ensure_ready(engine, auto_upgrade=self._auto_upgrade,
                                           schema=self.options.schema)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextmanager
    def _driver_errors(self) -> Iterator[None]:
        """Driver errors as Oneshot's: an unusable server is DatabaseUnavailable naming the
        URL (password masked), anything else the database refused is a StoreError."""
        try:
            yield
        except (OSError, DBAPIError) as exc:
            problem = server_problem(exc)
            if problem is not None:
                raise DatabaseUnavailable(self.options.display_url, problem) from exc
            kind = "write rejected" if isinstance(exc, IntegrityError) else "database error"
            raise StoreError(f"{kind}: {driver_message(exc)}") from exc

    async def _write(self, op: Callable[Concatenate[AsyncConnection, P], Awaitable[T]],
                     *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``op`` in one transaction, committed before this returns.

        Shielded from cancellation, like a write handed to SQLite's group-commit writer: once
        begun it commits (or fails) as a whole, and the connection goes back to the pool clean
        instead of being abandoned mid-protocol.

        A transaction that failed *before* its commit over something transient (a lost
        connection, a lock or statement timeout, a deadlock) certainly left nothing behind,
        so it is run again (:mod:`durable.transient`). A failure during the commit itself is
        not retried, since it may have committed, unless the server says it ended the session
        for idling in the transaction (a worker paused just before its commit).
        """
        with anyio.CancelScope(shield=True), self._driver_errors():
            try:
                return await retried(lambda: self._transaction(op, *args, **kwargs),
                                     _rolled_back, "write", self.options.retry_seconds)
            except _RolledBack as exc:
                raise exc.error from None
        raise AssertionError("unreachable: the shield does not swallow errors")

    async def _transaction(self, op: Callable[Concatenate[AsyncConnection, P], Awaitable[T]],
                           *args: P.args, **kwargs: P.kwargs) -> T:
        committing = False
        try:
            async with self.engine.begin() as conn:
                outcome = await op(conn, *args, **kwargs)
                committing = True
        except DBAPIError as exc:
            if not is_transient(exc) or (committing and not ended_idle_in_transaction(exc)):
                raise
            raise _RolledBack(exc) from exc
        return outcome

    # -- writes: each returns after its commit -------------------------------------------

    async def _create(self, task: NewTask, reason: str | None, worker: str | None
                      ) -> TaskRecord:
        return await self._write(writes.create_task, task, reason, worker)

    async def _move(self, task_id: str, from_state: TaskState, to_state: TaskState,
                    reason: str | None, worker: str | None, fields: Mapping[str, Any],
                    fence: int | None) -> tuple[Transition, int]:
        return await self._write(writes.move_task, task_id, from_state, to_state, reason,
                                 worker, fields, fence)

    async def _append(self, fragments: Sequence[LogFragment], offsets: SpoolOffsets | None,
                      fences: Mapping[str, int]) -> None:
        await self._write(writes.append_logs, fragments, offsets, fences)

    async def _save_process(self, handle: ProcessHandle, fence: int | None) -> None:
        await self._write(writes.save_process, handle, fence)

    async def _save_step(self, checkpoint: StepCheckpoint, fence: int | None) -> None:
        await self._write(writes.save_step, checkpoint, fence)

    async def _claim(self, worker: str, queues: Sequence[str], limit: int,
                     lease_seconds: float) -> list[TaskRecord]:
        return await self._write(writes.claim, worker, queues, limit, lease_seconds)

    async def _heartbeat(self, worker_id: str, state: WorkerState, lease_seconds: float,
                         held: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        return await self._write(writes.heartbeat, worker_id, state, lease_seconds, held)

    async def _release(self, task_id: str, fence: int) -> None:
        await self._write(writes.release_lease, task_id, fence)

    async def save_worker(self, worker: WorkerRecord) -> None:
        await self._write(writes.save_worker, worker)

    async def fail_corrupt(self, task_id: str, found_state: str, reason: str) -> None:
        await self._write(writes.fail_corrupt, task_id, found_state, reason)
