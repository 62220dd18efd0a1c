"""Task states and the transition table.

``CREATED -> RUNNING <-> IDLE -> COMPLETED | FAILED | INTERRUPTED``. A task RUNNING or IDLE when
the orchestrator died goes through ``RECOVERING`` back to ``RUNNING``, or to ``FAILED`` /
``INTERRUPTED`` by policy. ``CREATED`` may also end directly (cancelled before it ran, command
not found). Terminal states have no way out.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    IDLE = "IDLE"
    RECOVERING = "RECOVERING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.INTERRUPTED})

_ENDINGS = frozenset(TERMINAL_STATES)

TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.CREATED: frozenset({TaskState.RUNNING, TaskState.RECOVERING}) | _ENDINGS,
    TaskState.RUNNING: frozenset({TaskState.IDLE, TaskState.RECOVERING}) | _ENDINGS,
    TaskState.IDLE: frozenset({TaskState.RUNNING, TaskState.RECOVERING}) | _ENDINGS,
    # RECOVERING -> RECOVERING: another orchestrator takes over a recovery whose owner died.
    TaskState.RECOVERING: frozenset(
        {TaskState.RUNNING, TaskState.CREATED, TaskState.RECOVERING}
    ) | _ENDINGS,
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.INTERRUPTED: frozenset(),
}
"""Legal moves: ``TRANSITIONS[a]`` holds every state reachable from ``a`` in one step."""


def is_legal(from_state: TaskState, to_state: TaskState) -> bool:
    return to_state in TRANSITIONS[from_state]
