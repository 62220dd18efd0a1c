"""What a running workflow knows about itself, carried in a context variable.

Steps find their workflow through :data:`current_workflow`; ``asyncio.gather`` and anyio task
groups copy the context, so concurrent steps share one :class:`WorkflowContext` and its step
counter. A workflow called inside an orchestrator finds it through :data:`current_runtime`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Protocol

from durable.records import StepCheckpoint
from durable.retry import RetryPolicy
from durable.store import Store


class WorkflowContext:
    def __init__(self, store: Store, task_id: str, steps: list[StepCheckpoint],
                 default_retry: RetryPolicy) -> None:
        self.store = store
        self.task_id = task_id
        self.recorded = {step.seq: step for step in steps}
        self.default_retry = default_retry
        self._next_seq = 0

    def next_seq(self) -> int:
        """The sequence number of the step being called now (program order at call time)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq


class WorkflowRuntime(Protocol):
    """An orchestrator able to run a workflow durably (set while one is open)."""

    async def run_workflow(self, fn: Callable[..., Any], args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any: ...


current_workflow: ContextVar[WorkflowContext | None] = ContextVar(
    "oneshot_current_workflow", default=None
)
current_runtime: ContextVar[WorkflowRuntime | None] = ContextVar(
    "oneshot_current_runtime", default=None
)
default_retry_policy: ContextVar[RetryPolicy] = ContextVar(
    "oneshot_default_retry", default=RetryPolicy()  # noqa: B039 - frozen, immutable
)
