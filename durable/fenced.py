"""The write half of the Store contract that both SQL stores share: lease bookkeeping.

A SQL store implements the primitive writes (``_create``, ``_move``, ...), each committing one
operation and taking the fencing token to guard it with; this base class decides which token a
write carries and keeps :class:`durable.leases.Holdings` up to date from what was committed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from durable.exceptions import LeaseLost
from durable.leases import DEFAULT_LEASE_SECONDS, Holdings
from durable.records import (
    LogFragment,
    NewTask,
    ProcessHandle,
    StepCheckpoint,
    TaskRecord,
    Transition,
    WorkerState,
)
from durable.states import TaskState
from durable.store import SpoolOffsets


class FencedWrites(ABC):
    """Fenced writes over a store's primitives; subclasses provide the ``_`` methods."""

    holdings: Holdings

    def __init__(self) -> None:
        self.holdings = Holdings()

    # -- primitives: one committed operation each -------------------------------------------

    @abstractmethod
    async def _create(self, task: NewTask, reason: str | None, worker: str | None
                      ) -> TaskRecord:
        """Insert the task (CREATED) and its first history row."""

    @abstractmethod
    async def _move(self, task_id: str, from_state: TaskState, to_state: TaskState,
                    reason: str | None, worker: str | None, fields: Mapping[str, Any],
                    fence: int | None) -> tuple[Transition, int]:
        """The history row and the task's fencing token after the move."""

    @abstractmethod
    async def _append(self, fragments: Sequence[LogFragment], offsets: SpoolOffsets | None,
                      fences: Mapping[str, int]) -> None:
        """Store fragments and offsets; ``fences`` guards the held tasks among them."""

    @abstractmethod
    async def _save_process(self, handle: ProcessHandle, fence: int | None) -> None:
        """Upsert a process handle."""

    @abstractmethod
    async def _save_step(self, checkpoint: StepCheckpoint, fence: int | None) -> None:
        """Upsert a step checkpoint."""

    @abstractmethod
    async def _claim(self, worker: str, queues: Sequence[str], limit: int,
                     lease_seconds: float) -> list[TaskRecord]:
        """Take up to ``limit`` queued tasks (owner, lease, fence + 1), oldest first."""

    @abstractmethod
    async def _heartbeat(self, worker_id: str, state: WorkerState, lease_seconds: float,
                         held: Sequence[str]) -> dict[str, tuple[str | None, int]]:
        """Extend the worker's lease and those of the tasks in ``held`` it still owns; the
        current (owner, fence) of each task in ``held``."""

    @abstractmethod
    async def _release(self, task_id: str, fence: int) -> None:
        """Unown the task and expire its lease (new token), if it still carries ``fence``."""

    # -- the Store methods ----------------------------------------------------------------

    async def create_task(
        self, task: NewTask, *, reason: str | None = None, worker: str | None = None
    ) -> TaskRecord:
        record = await self._create(task, reason, worker)
        self.holdings.hold(record)
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
        takeover_from: int | None = None,
    ) -> Transition:
        fields = dict(fields or {})
        # A move that sets the owner is a takeover (or a release): guarded by the token the
        # taker read (or state alone), never by what this store holds, so a worker may take
        # over a task it once held and lost, like any other orphan.
        fence = takeover_from if "owner" in fields else self.holdings.fence(task_id)
        with self._losing():
            row, fence = await self._move(task_id, from_state, to_state, reason, worker, fields,
                                          fence)
        self.holdings.after_move(task_id, to_state, fields, fence)
        return row

    async def append_logs(
        self, fragments: Sequence[LogFragment], *, offsets: SpoolOffsets | None = None
    ) -> None:
        if not fragments and offsets is None:
            return
        task_ids = {f.task_id for f in fragments} | ({offsets[0]} if offsets else set())
        fences = {t: f for t in task_ids if (f := self.holdings.fence(t)) is not None}
        with self._losing():
            await self._append(list(fragments), offsets, fences)

    async def save_process(self, handle: ProcessHandle) -> None:
        with self._losing():
            await self._save_process(handle, self.holdings.fence(handle.task_id))

    async def save_step(self, checkpoint: StepCheckpoint) -> None:
        with self._losing():
            await self._save_step(checkpoint, self.holdings.fence(checkpoint.task_id))

    async def claim(self, *, worker: str, queues: Sequence[str] = ("default",), limit: int = 1,
                    lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list[TaskRecord]:
        records = await self._claim(worker, tuple(queues), limit, lease_seconds)
        for record in records:
            self.holdings.hold(record)
        return records

    async def heartbeat(self, worker_id: str, *, state: WorkerState = "active",
                        lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        before = self.holdings.held_by(worker_id)
        found = await self._heartbeat(worker_id, state, lease_seconds, list(before))
        return self.holdings.settle(worker_id, before, found)

    async def release_lease(self, task_id: str) -> None:
        fence = self.holdings.fence(task_id)
        if fence is not None:
            self.holdings.let_go(task_id)
            try:
                await self._release(task_id, fence)
            finally:
                self.holdings.forget(task_id)

    @contextmanager
    def _losing(self) -> Iterator[None]:
        """A LeaseLost raised inside means the task is no longer held: let go of it."""
        try:
            yield
        except LeaseLost as exc:
            self.holdings.let_go(exc.task_id)
            raise
