"""Oneshot's orchestrator: state machine, tasks, process supervision, and the CLI."""

from orchestrator.orchestrator import AsyncOrchestrator, TaskHandle
from orchestrator.states import OneshotStateMachine, TaskState
from orchestrator.task import OneshotTask, TaskResult

__all__ = [
    "AsyncOrchestrator",
    "OneshotStateMachine",
    "OneshotTask",
    "TaskHandle",
    "TaskResult",
    "TaskState",
]
