"""AsyncOrchestrator: runs tasks concurrently within a limit, every transition durable."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from config import OneshotSettings, load_settings
from durable.persistence import store_from_settings
from durable.records import NewTask, TaskKind, TaskRecord
from durable.store import Store
from orchestrator.logcapture import Tee
from orchestrator.task import CaptureOptions, OneshotTask, TaskResult


def new_task_id() -> str:
    return uuid.uuid4().hex


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(eq=False)
class TaskHandle:
    """A started task: its id, and its result once it ends."""

    id: str
    _task: OneshotTask
    _done: anyio.Event = field(default_factory=anyio.Event)
    _result: TaskResult | None = None
    _cancel_scope: anyio.CancelScope | None = None

    async def result(self) -> TaskResult:
        await self._done.wait()
        assert self._result is not None
        return self._result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        self._task.interrupt_reason = reason
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()


class AsyncOrchestrator:
    """Opens the store, runs tasks under a capacity limit, and shuts down cleanly.

    ``async with AsyncOrchestrator() as orch:`` reads settings (env, file), opens and migrates
    the store. Leaving the block waits for the tasks started in it; an exception or
    :meth:`shutdown` interrupts them instead, each recorded as INTERRUPTED with the reason.
    """

    def __init__(self, settings: OneshotSettings | None = None, *, store: Store | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.store = store if store is not None else store_from_settings(self.settings)
        self.worker_id = worker_id or new_worker_id()
        self.limiter = anyio.CapacityLimiter(self.settings.concurrency)
        self.capture_options = CaptureOptions(
            batch_bytes=self.settings.logs.batch_bytes,
            flush_interval=self.settings.logs.flush_interval,
            memory_cap=self.settings.logs.memory_cap_bytes,
            idle_threshold=self.settings.idle_threshold,
        )
        self._handles: dict[str, TaskHandle] = {}
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> AsyncOrchestrator:
        await self.store.open()
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._group is not None
        if exc is not None:
            self.shutdown(f"orchestrator stopped: {exc_type.__name__ if exc_type else exc}")
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        finally:
            self._group = None
            with anyio.CancelScope(shield=True):
                await self.store.close()

    @property
    def active(self) -> int:
        """Tasks started and not yet ended (running or waiting for capacity)."""
        return sum(1 for handle in self._handles.values() if not handle.done)

    async def submit(
        self,
        argv: list[str],
        *,
        name: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        tee: Tee | None = None,
    ) -> TaskHandle:
        """Create a command task (committed, owned by this orchestrator) and start it."""
        task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=name, argv=list(argv),
                       cwd=cwd or os.getcwd(), owner=self.worker_id)
        record = await self.store.create_task(task, reason="submitted", worker=self.worker_id)
        return self.start(record, env=env, tee=tee)

    async def run(self, argv: list[str], **kwargs: object) -> TaskResult:
        """Submit a command and wait for its result."""
        handle = await self.submit(argv, **kwargs)  # type: ignore[arg-type]
        return await handle.result()

    def start(self, record: TaskRecord, *, env: Mapping[str, str] | None = None,
              tee: Tee | None = None) -> TaskHandle:
        """Run an already created task (e.g. one claimed from the queue)."""
        if self._group is None:
            raise RuntimeError("use AsyncOrchestrator inside `async with`")
        task = OneshotTask(self.store, record, options=self.capture_options, env=env, tee=tee,
                           worker=self.worker_id)
        handle = TaskHandle(record.id, task)
        self._handles[record.id] = handle
        self._group.start_soon(self._run_task, handle, name=f"task {record.id}")
        return handle

    async def _run_task(self, handle: TaskHandle) -> None:
        try:
            with anyio.CancelScope() as scope:
                handle._cancel_scope = scope
                async with self.limiter:
                    handle._result = await handle._task.run()
            if handle._result is None:  # cancelled, perhaps before it could start
                with anyio.CancelScope(shield=True):
                    handle._result = await handle._task.settle_interrupted()
        finally:
            handle._done.set()
            del self._handles[handle.id]

    def cancel(self, task_id: str, reason: str = "cancelled") -> bool:
        """Interrupt a task this orchestrator runs; False if it is not running here."""
        handle = self._handles.get(task_id)
        if handle is None or handle.done:
            return False
        handle.cancel(reason)
        return True

    def shutdown(self, reason: str) -> None:
        """Interrupt every running task with ``reason`` (each is recorded INTERRUPTED)."""
        for handle in list(self._handles.values()):
            if not handle.done:
                handle.cancel(reason)
