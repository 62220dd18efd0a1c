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


class CorruptTask(StoreError):
    """A task's stored row cannot be read back (bad JSON, an unknown state)."""

    def __init__(self, task_id: str, problem: str) -> None:
        super().__init__(f"task {task_id}: its stored row is corrupt ({problem})")
        self.task_id = task_id
        self.problem = problem


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


class LeaseLost(StoreError):
    """This worker no longer holds the task: its lease expired and another worker took it
    over (the fencing token changed). Nothing was written; the caller must stop touching it."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id}: lease lost (another worker took it over)")
        self.task_id = task_id


class CommandNotFound(OneshotError):
    """The program of a command task does not exist or is not executable."""

    def __init__(self, program: str, problem: str) -> None:
        super().__init__(f"{program}: {problem}")
        self.program = program
        self.problem = problem


class SerializationError(OneshotError):
    """A value cannot be stored as JSON so that it comes back as itself; nothing was
    committed. ``problem`` names the type (and where it sits in the value)."""

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"cannot serialize {what}: {problem}")
        self.what = what
        self.problem = problem


class DeserializationError(SerializationError):
    """A stored value cannot be rebuilt here (its class is gone or cannot be imported, or the
    stored JSON is damaged)."""

    def __init__(self, what: str, problem: str) -> None:
        OneshotError.__init__(self, f"cannot rebuild {what}: {problem}")
        self.what = what
        self.problem = problem


class NonDeterminismError(OneshotError):
    """On replay, a workflow called a different step than the one recorded at this sequence."""

    def __init__(self, task_id: str, seq: int, recorded: str, called: str) -> None:
        super().__init__(
            f"workflow task {task_id} is not deterministic: step {seq} was {recorded!r} when it "
            f"ran, but the code now calls {called!r} there"
        )
        self.task_id = task_id
        self.seq = seq
        self.recorded = recorded
        self.called = called


class StepFailed(OneshotError):
    """Stands for a step's exception that cannot be stored and rebuilt as itself (see
    docs/workflows.md, "Replay"): the first run raises it (chained from the original) and every
    replay raises it again, with the same attributes.

    ``error_type`` is the original's qualified type name (``module.QualName``), ``message``
    its ``str()``, ``error_args`` its ``args``, each as itself when it can be stored, else as
    its ``repr()``.
    """

    def __init__(self, name: str, seq: int, error_type: str, message: str,
                 error_args: tuple[object, ...] = ()) -> None:
        super().__init__(f"step {seq} {name!r} failed: {error_type}: {message}")
        self.name = name
        self.seq = seq
        self.error_type = error_type
        self.message = message
        self.error_args = tuple(error_args)


class WorkflowFailed(OneshotError):
    """A workflow ended FAILED or INTERRUPTED; ``error`` is what was recorded."""

    def __init__(self, task_id: str, state: str, error: str | None) -> None:
        super().__init__(f"workflow task {task_id} {state}: {error or 'no error recorded'}")
        self.task_id = task_id
        self.state = state
        self.error = error


class WorkflowNotRegistered(OneshotError):
    """No workflow of this name is registered in this process (was its module imported?)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workflow {name!r} is not registered (import its module: "
                         "ONESHOT_WORKFLOWS__MODULES or --import)")
        self.name = name
