"""What a running workflow knows about itself, carried in a context variable.

Steps find their workflow through :data:`current_workflow`; ``asyncio.gather`` and anyio task
groups copy the context, so concurrent steps share one :class:`WorkflowContext` and its step
counter. A workflow called inside an orchestrator finds it through :data:`current_runtime`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from durable.records import StepCheckpoint
from durable.retry import RetryPolicy
from durable.store import Store


class WorkflowContext:
    def __init__(self, store: Store, task_id: str, steps: list[StepCheckpoint],
                 default_retry: RetryPolicy,
                 waiting: Callable[[], AbstractAsyncContextManager[None]] | None = None) -> None:
        self.store = store
        self.task_id = task_id
        self.recorded = {step.seq: step for step in steps}
        self.default_retry = default_retry
        self._waiting = waiting or _not_holding_anything
        self._next_seq = 0

    def waiting(self) -> AbstractAsyncContextManager[None]:
        """Wrap a wait on work this workflow started elsewhere (a command, a child workflow):
        meanwhile the workflow holds no concurrency slot, which that work may need."""
        return self._waiting()

    def next_seq(self) -> int:
        """The sequence number of the step being called now (program order at call time)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq


CHILD_TASK_IDS = uuid.UUID("5d1e7b0c-3f0a-4c55-9a3e-0e6f2b8d4a71")
"""The uuid5 namespace of the ids of tasks that steps start."""


@dataclass(slots=True)
class StepCall:
    """The step a workflow is running now (its sequence number): where the tasks that the step
    starts (``run_command``'s commands) get their ids."""

    task_id: str
    seq: int
    _children: int = 0

    def child_id(self) -> str:
        """The id of the next task this step call starts: the same on every replay, so a step
        resumed after a crash finds the task its first run started (running, or finished
        meanwhile) instead of starting the work a second time."""
        n = self._children
        self._children += 1
        return uuid.uuid5(CHILD_TASK_IDS, f"{self.task_id}/{self.seq}/{n}").hex


@asynccontextmanager
async def _not_holding_anything() -> AsyncIterator[None]:
    yield


class WorkflowRuntime(Protocol):
    """An orchestrator able to run a workflow durably (set while one is open)."""

    async def run_workflow(self, fn: Callable[..., Any], args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any: ...


current_workflow: ContextVar[WorkflowContext | None] = ContextVar(
    "oneshot_current_workflow", default=None
)
current_step: ContextVar[StepCall | None] = ContextVar("oneshot_current_step", default=None)
current_runtime: ContextVar[WorkflowRuntime | None] = ContextVar(
    "oneshot_current_runtime", default=None
)
default_retry_policy: ContextVar[RetryPolicy] = ContextVar(
    "oneshot_default_retry", default=RetryPolicy()  # noqa: B039 - frozen, immutable
)
