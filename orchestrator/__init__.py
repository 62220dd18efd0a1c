"""Oneshot's orchestrator: state machine, tasks, process supervision, and the CLI."""

from orchestrator.commands import CommandFailed, CommandResult, run_command
from orchestrator.orchestrator import AsyncOrchestrator, TaskHandle, WorkflowHandle
from orchestrator.states import OneshotStateMachine, TaskState
from orchestrator.task import OneshotTask, TaskResult

__all__ = [
    "AsyncOrchestrator",
    "CommandFailed",
    "CommandResult",
    "OneshotStateMachine",
    "OneshotTask",
    "TaskHandle",
    "TaskResult",
    "TaskState",
    "WorkflowHandle",
    "run_command",
]
