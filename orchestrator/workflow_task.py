"""WorkflowTask: runs (or resumes) one workflow, every step checkpointed."""

from __future__ import annotations

import time
from typing import Any

import anyio

from durable.context import WorkflowContext, current_workflow
from durable.error_codec import dump_error, error_summary
from durable.exceptions import OneshotError, SerializationError, StoreError
from durable.records import TaskRecord
from durable.retry import RetryPolicy
from durable.serialization import dump
from durable.states import TaskState
from durable.store import Store
from durable.workflow import get_workflow
from orchestrator.slot import Slot
from orchestrator.states import OneshotStateMachine
from orchestrator.task import LetGo, TaskResult


class WorkflowTask:
    """Drives a workflow task from CREATED (or RECOVERING) to a terminal state.

    The stored input is decoded and the function called with a :class:`WorkflowContext`
    holding every checkpoint recorded so far, loaded once: completed steps replay from it.
    """

    def __init__(self, store: Store, record: TaskRecord, *, default_retry: RetryPolicy,
                 worker: str | None = None) -> None:
        self.record = record
        self.store = store
        self.default_retry = default_retry
        self.machine = OneshotStateMachine(store, record.id, record.state, worker=worker)
        self.interrupt_reason = "cancelled"
        self.let_go: LetGo | None = None
        self.slot: Slot | None = None
        """The concurrency slot it runs in, given back while it waits on work it started."""

    @property
    def id(self) -> str:
        return self.record.id

    async def run(self) -> TaskResult:
        resuming = self.machine.state is TaskState.RECOVERING
        try:
            definition = get_workflow(self.record.workflow or "")
            args, kwargs = definition.codec.load(self.record.input or "{}")
        except (OneshotError, ValueError) as exc:
            return await self._fail(f"cannot resume: {exc}" if resuming else str(exc))
        reason = "resumed from checkpoints" if resuming else "started"
        await self.machine.transition(TaskState.RUNNING, reason, started_at=time.time())
        steps = await self.store.load_steps(self.id) if resuming else []
        ctx = WorkflowContext(self.store, self.id, steps, self.default_retry,
                              waiting=self.slot.given_back if self.slot else None)
        token = current_workflow.set(ctx)
        try:
            value: Any = await definition.fn(*args, **kwargs)
            result = dump(value, f"the result of {definition.name!r}")
        except anyio.get_cancelled_exc_class():
            if self.let_go is None:
                with anyio.CancelScope(shield=True):
                    await self.settle_interrupted()
            raise
        except SerializationError as exc:
            return await self._fail(str(exc), dump_error(exc))
        except StoreError:
            raise  # the database failed, not the workflow: it resumes from its checkpoints
        except Exception as exc:
            return await self._fail(f"{type(exc).__name__}: {exc}", dump_error(exc))
        finally:
            current_workflow.reset(token)
        await self.machine.transition(
            TaskState.COMPLETED, "returned", result=result, finished_at=time.time()
        )
        return TaskResult(self.id, TaskState.COMPLETED, None, None, result)

    async def _fail(self, reason: str, error: str | None = None) -> TaskResult:
        stored = error or dump_error(RuntimeError(reason))
        await self.machine.transition(
            TaskState.FAILED, reason, error=stored, finished_at=time.time()
        )
        return TaskResult(self.id, TaskState.FAILED, None, stored)

    async def settle_interrupted(self, exit_code: int | None = None) -> TaskResult:
        """Record INTERRUPTED (with the interrupt reason) unless the task already ended."""
        if not self.machine.is_terminal:
            error = dump_error(RuntimeError(self.interrupt_reason))
            await self.machine.transition(
                TaskState.INTERRUPTED, self.interrupt_reason, error=error,
                finished_at=time.time(),
            )
            return TaskResult(self.id, TaskState.INTERRUPTED, None, error)
        record = await self.store.get_task(self.id)
        return TaskResult(record.id, record.state, None, record.error, record.result)


def describe_error(error: str | None) -> str:
    """A stored workflow error (JSON) as one line."""
    if not error:
        return "no error recorded"
    try:
        return error_summary(error)
    except (ValueError, KeyError, TypeError):
        return error
