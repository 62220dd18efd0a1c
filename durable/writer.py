"""Group commit: one writer commits whatever is queued as one transaction.

Callers ``await writer.submit(op)``. The writer — a dedicated thread that owns the database
connection — takes every operation queued since its last commit (up to ``max_batch``), runs them
through ``apply_batch`` (which commits once), and only after that commit resolves each caller's
future on the event loop, all in one callback. Nothing is acknowledged before its commit;
throughput under concurrency comes from sharing one commit (one fsync) among every waiter.

While one batch commits, new operations queue up, so the next batch is naturally larger the
busier the store is; a sequential caller pays one commit per operation and no added wait unless
``max_wait`` asks the writer to linger for company. A thread rather than an asyncio task: the
hand-off is then one thread wake-up and one loop wake-up per batch, with no hop through an
executor, which is most of the per-operation cost once the commit is a single fsync.

``apply_batch`` returns one outcome per operation: a value, or an exception for that operation
alone (a rejected guarded update, a constraint violation). If the commit itself fails, every
operation of the batch gets that error: none of them was committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio

from durable.exceptions import StoreError

Op = TypeVar("Op")

_STOP = object()


class GroupCommitWriter(Generic[Op]):
    def __init__(
        self,
        apply_batch: Callable[[Sequence[Op]], list[Any]],
        *,
        max_batch: int = 2000,
        max_wait: float = 0.0,
        name: str = "oneshot-writer",
    ) -> None:
        self._apply_batch = apply_batch
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.commits = 0
        self.operations = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    async def submit(self, op: Op) -> Any:
        """Queue ``op`` and return its outcome once it is committed."""
        if self._closing or self._loop is None:
            raise StoreError("the store is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((op, future))
        return await future

    async def close(self) -> None:
        """Commit everything queued, then stop the writer thread."""
        if self._closing:
            return
        self._closing = True
        self._queue.put(_STOP)
        if self._thread is not None:
            await anyio.to_thread.run_sync(self._thread.join)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            if self._max_wait and batch[0] is not _STOP:
                threading.Event().wait(self._max_wait)
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        try:
            outcomes: list[Any] = self._apply_batch([op for op, _ in batch])
        except Exception as exc:  # every waiter of the batch must learn the outcome
            outcomes = [exc] * len(batch)
        else:
            self.commits += 1
            self.operations += len(batch)
        self._deliver(batch, outcomes)

    def _deliver(self, batch: list[Any], outcomes: list[Any]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is gone; nobody waits any more
            self._loop.call_soon_threadsafe(_resolve, batch, outcomes)


def _resolve(batch: list[tuple[Any, asyncio.Future[Any]]], outcomes: list[Any]) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():  # the caller was cancelled; its op is committed anyway
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
