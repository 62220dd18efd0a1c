"""The reads of the Store contract, shared by both SQL stores (SQLite and PostgreSQL).

Engine-agnostic SQLAlchemy Core over the store's async engine: each read takes a pooled
connection and sees only committed rows. Where the engines differ in meaning, the statement
adapts to the dialect (a name glob is case-insensitive on both, as ``LIKE`` is on SQLite).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

import anyio
from sqlalchemy import ColumnElement, and_, asc, desc, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from durable.engine import ConnectionOptions, is_transient
from durable.exceptions import CorruptTask, StoreError, TaskNotFound
from durable.records import (
    LogFragment,
    ProcessHandle,
    StepCheckpoint,
    Stream,
    TaskRecord,
    TaskRef,
    Transition,
    WorkerStatus,
)
from durable.rows import (
    fragment_from_row,
    handle_from_row,
    step_from_row,
    task_from_row,
    transition_from_row,
    worker_from_row,
)
from durable.schema import (
    log_fragments,
    process_handles,
    step_checkpoints,
    task_states,
    tasks,
    workers,
)
from durable.states import TERMINAL_STATES, TaskState
from durable.store import (
    TASK_ID_LENGTH,
    TaskCursor,
    glob_to_like,
    is_valid_id_prefix,
    resolve_prefix,
)
from durable.transient import retried

IN_LIST_CHUNK = 500
"""Ids per ``IN (...)`` list: well under SQLite's bound-parameter limit (and PostgreSQL's)."""


class SqlReads:
    """The read methods of :class:`durable.store.Store`; a subclass opens ``_engine``."""

    _engine: AsyncEngine | None = None
    options: ConnectionOptions

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    def _driver_errors(self) -> AbstractContextManager[None]:
        """Translates the driver's errors into Oneshot's (a subclass's writes use it too).
        By default they pass through: the CLI recognizes a damaged SQLite file by them."""
        return nullcontext()

    async def _fetch(self, statement: Any) -> list[Mapping[str, Any]]:
        # Shielded: a query cancelled halfway leaves the driver's connection mid-protocol, and
        # the pool may hand it to the next write ("another operation is in progress"); a read
        # is short, so the cancellation simply takes effect once it returns.
        with anyio.CancelScope(shield=True), self._driver_errors():
            rows = await retried(lambda: self._fetch_once(statement), is_transient, "read",
                                 self.options.retry_seconds)
        return rows

    async def _fetch_once(self, statement: Any) -> list[Mapping[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(statement)
            return [dict(row) for row in result.mappings()]

    def _name_matches(self, pattern: str) -> ColumnElement[bool]:
        """``tasks.name`` matches the glob ``pattern``, ignoring case as SQLite's LIKE does.
        (On SQLite, plain LIKE keeps the index usable; PostgreSQL's LIKE is case-sensitive.)"""
        like = glob_to_like(pattern)
        if self.engine.dialect.name == "postgresql":
            return tasks.c.name.ilike(like, escape="\\")
        return tasks.c.name.like(like, escape="\\")

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
        cursor: TaskCursor | None = None,
    ) -> list[TaskRecord]:
        direction = asc if oldest_first else desc
        statement = select(tasks).order_by(direction(tasks.c.created_at), direction(tasks.c.id))
        if cursor is not None:
            statement = statement.where(_after_cursor(cursor, oldest_first))
        if states is not None:
            statement = statement.where(tasks.c.state.in_([s.value for s in states]))
        if name is not None:
            statement = statement.where(self._name_matches(name))
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
        before_seq: int | None = None,
    ) -> list[LogFragment]:
        statement = select(log_fragments).where(log_fragments.c.task_id == task_id)
        if before_seq is not None:
            statement = statement.where(log_fragments.c.seq < before_seq)
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
            func.count().label("count"),
            func.coalesce(func.sum(func.length(log_fragments.c.data)), 0).label("total"),
        ).where(log_fragments.c.task_id == task_id)
        (row,) = await self._fetch(statement)
        return int(row["count"]), int(row["total"])

    async def unfinished_tasks(self) -> list[TaskRef]:
        terminal = [state.value for state in TERMINAL_STATES]
        statement = (
            select(tasks).where(tasks.c.state.not_in(terminal)).order_by(tasks.c.created_at)
        )
        return [_task_ref(row) for row in await self._fetch(statement)]

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

    async def list_workers(self, *, include_stopped: bool = False) -> list[WorkerStatus]:
        terminal = [state.value for state in TERMINAL_STATES]

        def owned(ended: bool) -> Any:
            in_state = tasks.c.state.in_(terminal) if ended else tasks.c.state.not_in(terminal)
            return (select(func.count()).where(tasks.c.owner == workers.c.id, in_state)
                    .scalar_subquery())

        statement = (select(workers, owned(False).label("running"), owned(True).label("finished"))
                     .order_by(workers.c.heartbeat_at.desc()))
        if not include_stopped:
            statement = statement.where(workers.c.state != "stopped")
        return [WorkerStatus(worker_from_row(row), row["running"], row["finished"])
                for row in await self._fetch(statement)]

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


def _after_cursor(cursor: TaskCursor, oldest_first: bool) -> ColumnElement[bool]:
    """Tasks after ``cursor`` in the listing order. The plain bound on ``created_at`` keeps
    the ``created_at`` indexes usable; the id breaks ties between equal times."""
    created_at, task_id = cursor
    if oldest_first:
        return and_(tasks.c.created_at >= created_at,
                    or_(tasks.c.created_at > created_at, tasks.c.id > task_id))
    return and_(tasks.c.created_at <= created_at,
                or_(tasks.c.created_at < created_at, tasks.c.id < task_id))


def _task_ref(row: Mapping[str, Any]) -> TaskRef:
    ref = TaskRef(row["id"], row["kind"], row["state"], row["owner"], row["lease_expires_at"])
    try:
        return replace(ref, record=task_from_row(row))
    except CorruptTask as exc:
        return replace(ref, problem=exc.problem)
