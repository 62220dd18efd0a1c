"""The error hierarchy of Oneshot's durable layer.

Every error Oneshot raises on purpose derives from :class:`OneshotError` and carries the data a
caller needs (task id, states, step sequence) as attributes. Driver errors are kept as
``__cause__``. Cancellation is never converted into an ``OneshotError``.
"""

from __future__ import annotations


class OneshotError(Exception):
    """Root of every error Oneshot raises on purpose."""


class StoreError(OneshotError):
    """The database could not be opened, read or written."""


class DatabaseUnavailable(StoreError):
    """The database file or server cannot be used (unwritable path, not a database, ...)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"database {url}: {problem}")
        self.url = url
        self.problem = problem


class TaskNotFound(OneshotError):
    """No task has this id (or id prefix)."""

    def __init__(self, task_id: str, problem: str = "no such task") -> None:
        super().__init__(f"{problem}: {task_id}")
        self.task_id = task_id


class IllegalTransition(OneshotError):
    """The state machine does not allow this move; nothing was written."""

    def __init__(self, task_id: str, from_state: str, to_state: str) -> None:
        super().__init__(f"task {task_id}: illegal transition {from_state} -> {to_state}")
        self.task_id = task_id
        self.from_state = from_state
        self.to_state = to_state


class StateConflict(OneshotError):
    """The task was not in the expected state when the transition was committed.

    Raised by the store's guarded update: another writer moved the task first.
    """

    def __init__(self, task_id: str, expected: str, actual: str | None) -> None:
        super().__init__(
            f"task {task_id}: expected state {expected}, found {actual or 'no such task'}"
        )
        self.task_id = task_id
        self.expected = expected
        self.actual = actual


class CommandNotFound(OneshotError):
    """The program of a command task does not exist or is not executable."""

    def __init__(self, program: str, problem: str) -> None:
        super().__init__(f"{program}: {problem}")
        self.program = program
        self.problem = problem
