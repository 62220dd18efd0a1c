"""AsyncOrchestrator: runs tasks concurrently within a limit, every transition durable."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import anyio
import platformdirs
from anyio.abc import TaskGroup

from config import OneshotSettings, load_settings
from durable.context import current_runtime, current_workflow, default_retry_policy
from durable.engine import ConnectionOptions
from durable.exceptions import (
    LeaseLost,
    OneshotError,
    StoreError,
    WorkflowFailed,
)
from durable.persistence import store_from_settings
from durable.records import LogFragment, NewTask, Stream, TaskKind, TaskRecord, WorkerState
from durable.recovery import FOLLOWED_TASKS, LIVE_OWNERS
from durable.retry import RetryPolicy
from durable.serialization import load
from durable.states import TaskState
from durable.store import Store
from durable.workflow import Workflow
from orchestrator.logcapture import Tee
from orchestrator.logview import OutputQuery, read_output
from orchestrator.options import RunOptions
from orchestrator.recovery import recover_orphans
from orchestrator.slot import Slot
from orchestrator.states import OneshotStateMachine
from orchestrator.task import CaptureOptions, LetGo, OneshotTask, Reattachment, TaskResult
from orchestrator.workflow_task import WorkflowTask, describe_error

logger = logging.getLogger(__name__)


def new_task_id() -> str:
    return uuid.uuid4().hex


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Runner(Protocol):
    """What a handle drives: :class:`OneshotTask` or :class:`WorkflowTask`."""

    interrupt_reason: str
    let_go: LetGo | None
    machine: OneshotStateMachine

    async def run(self) -> TaskResult: ...

    async def settle_interrupted(self, exit_code: int | None = None) -> TaskResult: ...


@dataclass(eq=False)
class TaskHandle:
    """A started task: its id, and its result once it ends."""

    id: str
    _runner: Runner
    _done: anyio.Event = field(default_factory=anyio.Event)
    _result: TaskResult | None = None
    _cancel_scope: anyio.CancelScope | None = None

    async def outcome(self) -> TaskResult:
        """The task's final state, exit code, error and (for workflows) result JSON.

        Awaited inside a workflow, the workflow gives its concurrency slot back meanwhile."""
        if not self._done.is_set():
            ctx = current_workflow.get()
            if ctx is None:
                await self._done.wait()
            else:
                async with ctx.waiting():
                    await self._done.wait()
        assert self._result is not None
        return self._result

    async def result(self) -> Any:
        return await self.outcome()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        self._runner.interrupt_reason = reason
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def let_go(self, why: LetGo) -> None:
        """Stop following the task without ending it or its process (see :class:`LetGo`)."""
        self._runner.let_go = why
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()


@dataclass(eq=False)
class WorkflowHandle(TaskHandle):
    """A started workflow; :meth:`result` is its return value (or raises WorkflowFailed)."""

    async def result(self) -> Any:
        outcome = await self.outcome()
        if outcome.state is not TaskState.COMPLETED:
            raise WorkflowFailed(self.id, outcome.state.value, describe_error(outcome.error))
        return load(outcome.result or "null", f"the result of workflow task {self.id}")


class AsyncOrchestrator:
    """Opens the store, runs tasks under a capacity limit, and shuts down cleanly.

    ``async with AsyncOrchestrator() as orch:`` reads settings (env, file), opens and migrates
    the store and, with ``recovery.on_startup`` (or ``resume_workflows=True``), resumes the
    interrupted workflows registered in this process, as a program started again after a
    crash expects (commands are recovered by ``oneshot recover`` or a worker). Inside the
    block, calling a ``@workflow`` runs it durably. Leaving the block
    waits for the tasks started in it; an exception or :meth:`shutdown` interrupts them
    instead, each recorded as INTERRUPTED with the reason.
    """

    def __init__(self, settings: OneshotSettings | None = None, *, store: Store | None = None,
                 worker_id: str | None = None, resume_workflows: bool | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.resume_workflows = (self.settings.recovery.on_startup if resume_workflows is None
                                 else resume_workflows)
        self.store = store if store is not None else store_from_settings(self.settings)
        self.worker_id = worker_id or new_worker_id()
        self.lease_seconds = self.settings.worker.lease_seconds
        self.worker_state: WorkerState = "active"
        self._leases_confirmed_at = time.time()
        self.limiter = anyio.CapacityLimiter(self.settings.concurrency)
        self._temporary_spool: Path | None = None
        self.capture_options = CaptureOptions(
            spool_dir=self._spool_dir(),
            batch_bytes=self.settings.logs.batch_bytes,
            flush_interval=self.settings.logs.flush_interval,
            memory_cap=self.settings.logs.memory_cap_bytes,
            idle_threshold=self.settings.idle_threshold,
        )
        self.default_retry = RetryPolicy.from_settings(self.settings.retry)
        self._handles: dict[str, TaskHandle] = {}
        self._group: TaskGroup | None = None
        self._services: TaskGroup | None = None
        self._task_ended = anyio.Event()
        self._context_tokens: list[contextvars.Token[Any]] = []
        self.resumed: list[TaskHandle] = []
        """The interrupted workflows this orchestrator resumed as it opened."""

    def _spool_dir(self) -> Path:
        """Where shims spool output: configured, beside the SQLite file, or (persistence off)
        a private temporary directory, RAM-backed where /dev/shm exists, removed at close."""
        if self.settings.spool_dir is not None:
            return self.settings.spool_dir
        if not self.settings.persistence.enabled:
            shm = Path("/dev/shm")
            self._temporary_spool = Path(tempfile.mkdtemp(
                prefix="oneshot-", dir=shm if shm.is_dir() else None))
            return self._temporary_spool
        database = ConnectionOptions(self.settings.database.url).sqlite_path
        if database is not None:
            return database.with_name(database.name + "-runs")
        return Path(platformdirs.user_data_dir("oneshot")) / "runs"

    async def __aenter__(self) -> AsyncOrchestrator:
        await self.store.open()
        # Two groups: the services (heartbeat) outlive the tasks, which leaving the block
        # waits for while their leases are still being kept.
        self._services = anyio.create_task_group()
        await self._services.__aenter__()
        self._services.start_soon(self._heartbeat, name="heartbeat")
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        LIVE_OWNERS.add(self.worker_id)
        self._context_tokens = [current_runtime.set(self),
                                default_retry_policy.set(self.default_retry)]
        if self.resume_workflows and self.settings.persistence.enabled:
            try:
                self.resumed = await recover_orphans(self, workflows_only=True)
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._group is not None
        current_runtime.reset(self._context_tokens[0])
        default_retry_policy.reset(self._context_tokens[1])
        if exc is not None:
            self.shutdown(f"orchestrator stopped: {exc_type.__name__ if exc_type else exc}")
        try:
            try:
                return await self._group.__aexit__(exc_type, exc, tb)
            finally:
                assert self._services is not None
                self._services.cancel_scope.cancel()
                await self._services.__aexit__(None, None, None)
        finally:
            self._group = self._services = None
            LIVE_OWNERS.discard(self.worker_id)
            with anyio.CancelScope(shield=True):
                await self.store.close()
            if self._temporary_spool is not None:
                shutil.rmtree(self._temporary_spool, ignore_errors=True)

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
        options: RunOptions | None = None,
        task_id: str | None = None,
    ) -> TaskHandle:
        """Create a command task (committed, owned by this orchestrator) and start it."""
        task = NewTask(id=task_id or new_task_id(), kind=TaskKind.COMMAND, name=name,
                       argv=list(argv),
                       cwd=cwd or os.getcwd(), owner=self.worker_id,
                       lease_expires_at=self.lease_expiry(),
                       options=(options or RunOptions()).to_json())
        record = await self.store.create_task(task, reason="submitted", worker=self.worker_id)
        return self.start_task(record, env=env, tee=tee)

    async def run(self, argv: list[str], **kwargs: Any) -> TaskResult:
        """Submit a command and wait for its result."""
        handle = await self.submit(argv, **kwargs)
        return await handle.outcome()

    async def start(self, wf: Workflow[Any, Any], /, *args: Any, **kwargs: Any
                    ) -> WorkflowHandle:
        """Start a workflow durably: its input is committed before it runs."""
        task = NewTask(id=new_task_id(), kind=TaskKind.WORKFLOW, name=wf.name,
                       workflow=wf.name, input=wf.codec.dump(args, kwargs, wf.name),
                       owner=self.worker_id, lease_expires_at=self.lease_expiry())
        record = await self.store.create_task(task, reason="submitted", worker=self.worker_id)
        handle = self.start_task(record)
        assert isinstance(handle, WorkflowHandle)
        return handle

    async def enqueue(self, wf: Workflow[Any, Any], /, *args: Any, **kwargs: Any) -> str:
        """Queue a workflow on the ``default`` queue for any worker; returns the task id."""
        return await self.enqueue_to("default", wf, *args, **kwargs)

    async def enqueue_to(self, queue: str, wf: Workflow[Any, Any], /, *args: Any,
                         **kwargs: Any) -> str:
        """Queue a workflow (input committed, no owner) on ``queue``; returns the task id."""
        task = NewTask(id=new_task_id(), kind=TaskKind.WORKFLOW, name=wf.name,
                       workflow=wf.name, input=wf.codec.dump(args, kwargs, wf.name), queue=queue)
        await self.store.create_task(task, reason=f"queued on {queue}")
        return task.id

    async def run_workflow(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                           ) -> Any:
        """Start a workflow and return its result (what calling it inside the block does)."""
        handle = await self.start(fn, *args, **kwargs)
        return await handle.result()

    def start_task(self, record: TaskRecord, *, env: Mapping[str, str] | None = None,
                   tee: Tee | None = None, reattach: Reattachment | None = None) -> TaskHandle:
        """Run a created (or claimed, or recovering) task in this orchestrator; with
        ``reattach``, follow the surviving shim of a recovering command instead."""
        if self._group is None:
            raise RuntimeError("use AsyncOrchestrator inside `async with`")
        handle: TaskHandle
        limiter: Slot | anyio.CapacityLimiter | contextlib.nullcontext[None]
        if record.kind == TaskKind.WORKFLOW:
            runner = WorkflowTask(self.store, record, default_retry=self.default_retry,
                                  worker=self.worker_id)
            handle = WorkflowHandle(record.id, runner)
            limiter = runner.slot = Slot(self.limiter)
        else:
            handle = TaskHandle(record.id, OneshotTask(
                self.store, record, options=self.capture_options, env=env, tee=tee,
                worker=self.worker_id, reattach=reattach, holds_lease=self.holds_leases))
            # A reattached command is already running: following it takes no capacity.
            limiter = self.limiter if reattach is None else contextlib.nullcontext()
        self._handles[record.id] = handle
        FOLLOWED_TASKS.add(record.id)
        self._group.start_soon(self._run_task, handle, limiter, name=f"task {record.id}")
        return handle

    async def _run_task(self, handle: TaskHandle,
                        limiter: Slot | anyio.CapacityLimiter | contextlib.nullcontext[None]
                        ) -> None:
        runner = handle._runner
        try:
            try:
                with anyio.CancelScope() as scope:
                    handle._cancel_scope = scope
                    async with limiter:
                        handle._result = await runner.run()
            except* LeaseLost:
                runner.let_go = LetGo.LEASE_LOST  # a fenced write found another owner
            except* Exception as failed:
                # The database refused a write past the store's retries (or following the task
                # hit a bug): one task's trouble must not bring down the others. Nothing is
                # stopped: the process keeps running into its spool, and the task is recovered
                # (here or by another worker) from what was committed once its lease passed.
                errors = failed.exceptions
                logger.error("task %s: %s: %s", handle.id, LetGo.FAILED_HERE.value,
                             "; ".join(str(exc) for exc in errors),
                             exc_info=not all(isinstance(e, OneshotError) for e in errors))
                runner.let_go = LetGo.FAILED_HERE
            if handle._result is None:  # cancelled or let go, perhaps before it could start
                with anyio.CancelScope(shield=True):
                    handle._result = await self._settle(handle.id, runner)
        finally:
            handle._done.set()
            del self._handles[handle.id]
            FOLLOWED_TASKS.discard(handle.id)
            self._task_ended.set()
            self._task_ended = anyio.Event()

    async def _settle(self, task_id: str, runner: Runner) -> TaskResult:
        if runner.let_go is None:
            return await runner.settle_interrupted()
        if runner.let_go is LetGo.LEASE_LOST:
            logger.warning("task %s: %s; this worker stops following it", task_id,
                           runner.let_go.value)
        # Fenced: a no-op if another worker took the task over, else it goes to whoever takes
        # it next (never left owned by a worker that no longer follows it). If even this
        # fails, the lease, no longer extended, passes within a lease period.
        try:
            await self.store.release_lease(task_id)
        except StoreError as exc:
            logger.warning("task %s: could not release its lease: %s", task_id, exc)
        return TaskResult(task_id, runner.machine.state, None, runner.let_go.value)

    async def wait_for_task_end(self) -> None:
        """Return when any task started here ends."""
        await self._task_ended.wait()

    def lease_expiry(self) -> float:
        return time.time() + self.lease_seconds

    def holds_leases(self) -> bool:
        """Whether this orchestrator's leases surely still hold: its last heartbeat began less
        than most of a lease ago. False after a pause (SIGSTOP) or stall past the lease, when
        others may have taken its tasks over: no new side effect (a spawn) may start then."""
        return time.time() < self._leases_confirmed_at + self.lease_seconds * 0.8

    async def _heartbeat(self) -> None:
        """Keep this orchestrator's leases (and its ``workers`` row, if any) alive; let go of
        tasks another worker took over while this one could not heartbeat (paused, cut off)."""
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            started = time.time()
            try:
                lost = await self.store.heartbeat(self.worker_id, state=self.worker_state,
                                                  lease_seconds=self.lease_seconds)
            except Exception as exc:  # a heartbeat loop that died would lose every lease
                logger.warning("heartbeat failed (leases expire in at most %.0f s): %s",
                               self.lease_seconds, exc, exc_info=not isinstance(exc, StoreError))
                continue
            self._leases_confirmed_at = started
            for task_id in lost:
                handle = self._handles.get(task_id)
                if handle is not None and not handle.done:
                    handle.let_go(LetGo.LEASE_LOST)

    async def recover(self, only: str | None = None) -> list[TaskHandle]:
        """Resume what was interrupted (or only task ``only``); see
        :mod:`orchestrator.recovery`."""
        return await recover_orphans(self, only)

    def logs(self, task_id: str, *, streams: Collection[Stream] | None = None,
             since: float | None = None, tail: int | None = None, follow: bool = False
             ) -> AsyncIterator[LogFragment]:
        """A task's output as fragments in order (see :func:`orchestrator.logview.read_output`);
        with ``follow``, until the task has ended — also for tasks run by other processes."""
        return read_output(self.store, OutputQuery(task_id, streams, since), tail=tail,
                           follow=follow)

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

    def hand_over(self) -> None:
        """Let go of every running task, leaving its process running and its lease expired,
        so another worker takes it over at once (reattaching where it can)."""
        for handle in list(self._handles.values()):
            if not handle.done:
                handle.let_go(LetGo.HAND_OVER)

