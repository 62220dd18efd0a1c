"""Group commit: one writer task commits whatever is queued as one transaction.

Callers ``await writer.submit(op)``. The writer task takes every operation queued since its last
commit (up to ``max_batch``), hands the whole batch to ``apply_batch`` — a blocking function that
runs each operation and commits once, on the writer's own thread and connection — and only after
that commit resolves each caller's future. Nothing is acknowledged before its commit; throughput
under concurrency comes from sharing one commit (one fsync) among every waiter.

While one batch commits, new operations queue up, so the next batch is naturally larger the
busier the store is; a sequential caller pays one commit per operation and no added wait unless
``max_wait`` asks the writer to linger for company.

``apply_batch`` returns one outcome per operation: a value, or an exception for that operation
alone (a rejected guarded update, a constraint violation). If the commit itself fails, every
operation of the batch gets that error: none of them was committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from durable.exceptions import StoreError

Op = TypeVar("Op")


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
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.operations = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="oneshot-writer")

    async def submit(self, op: Op) -> Any:
        """Queue ``op`` and return its outcome once it is committed."""
        if self._closing or self._task is None:
            raise StoreError("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        self._wakeup.set()
        return await future

    async def run_exclusive(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the writer's thread between batches (e.g. close, backup)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def close(self) -> None:
        """Commit everything queued, then stop the writer task and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._thread.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if self._max_wait and len(self._pending) < self._max_batch and not self._closing:
                await asyncio.sleep(self._max_wait)
            self._wakeup.clear()
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            if self._pending:
                self._wakeup.set()
            if not batch:
                if self._closing:
                    return
                continue
            ops = [op for op, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._thread, self._apply_batch, ops)
            except BaseException as exc:
                error = exc if isinstance(exc, Exception) else StoreError("writer stopped")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.commits += 1
            self.operations += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller was cancelled; its op is committed anyway
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
