"""Immutable records exchanged between the store and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

from durable.states import TaskState


class Stream(IntEnum):
    """Which output stream a log fragment came from (stored as this small integer)."""

    STDOUT = 1
    STDERR = 2

    @classmethod
    def parse(cls, name: str) -> Stream:
        return cls[name.upper()]


class TaskKind:
    COMMAND = "command"
    WORKFLOW = "workflow"


@dataclass(frozen=True, slots=True)
class NewTask:
    """What a caller supplies to create a task; the store assigns nothing but timestamps."""

    id: str
    kind: str
    name: str | None = None
    argv: list[str] | None = None
    cwd: str | None = None
    workflow: str | None = None
    input: str | None = None
    queue: str = "default"
    owner: str | None = None
    """The worker running it; None leaves it in the queue for any worker to claim."""
    options: str | None = None
    """A command's run options as JSON (see ``orchestrator.options.RunOptions``)."""
    lease_expires_at: float | None = None
    """With ``owner``: until when the owner holds it without a heartbeat."""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One row of ``tasks``: the current state of a task and its outcome."""

    id: str
    kind: str
    name: str | None
    state: TaskState
    created_at: float
    updated_at: float
    argv: list[str] | None = None
    cwd: str | None = None
    workflow: str | None = None
    input: str | None = None
    queue: str = "default"
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    result: str | None = None
    error: str | None = None
    attempt: int = 1
    owner: str | None = None
    options: str | None = None
    log_dropped_bytes: int = 0
    """Bytes of the oldest output deleted by retention (the rest is the newest output)."""
    lease_expires_at: float | None = None
    fence: int = 0
    """The fencing token: incremented whenever the owner changes (see ``durable.leases``)."""

    def as_json(self) -> dict[str, Any]:
        """The stable field names of ``ls --json`` / ``show --json``."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "attempt": self.attempt,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "argv": self.argv,
            "workflow": self.workflow,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class TaskRef:
    """An unfinished task as recovery scans it: the raw columns it decides on, and the record
    — or, for a row that cannot be read (bad JSON, unknown state), the problem."""

    id: str
    kind: str
    state: str
    owner: str | None
    lease_expires_at: float | None = None
    record: TaskRecord | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of ``task_states``: a committed state change."""

    task_id: str
    from_state: TaskState | None
    to_state: TaskState
    at: float
    reason: str | None = None
    worker: str | None = None
    attempt: int = 1

    def as_json(self) -> dict[str, Any]:
        return {
            "from_state": self.from_state.value if self.from_state else None,
            "to_state": self.to_state.value,
            "at": self.at,
            "reason": self.reason,
            "worker": self.worker,
            "attempt": self.attempt,
        }


@dataclass(frozen=True, slots=True)
class LogFragment:
    """A chunk of raw output bytes; ``seq`` orders fragments of one task across both streams."""

    task_id: str
    stream: Stream
    seq: int
    at: float
    data: bytes = field(repr=False)


class StepStatus:
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StepCheckpoint:
    """One row of ``step_checkpoints``: the outcome of a workflow step, written once it ended.

    ``result`` is the JSON of the return value; ``error`` the JSON of the exception
    (``{"type": ..., "module": ..., "message": ...}``) when ``status`` is failed.
    """

    task_id: str
    seq: int
    name: str
    status: str
    started_at: float
    finished_at: float
    attempts: int = 1
    result: str | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "name": self.name,
            "status": self.status,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ProcessHandle:
    """Where a command's shim spools output, who it is, and how much output is stored.

    Identity is (pid, start time) on (host, boot id): a pid alone is never trusted.
    """

    task_id: str
    attempt: int
    run_dir: str
    host: str
    boot_id: str | None = None
    shim_pid: int | None = None
    shim_start: int | None = None
    pid: int | None = None
    pid_start: int | None = None
    pgid: int | None = None
    stdout_offset: int = 0
    stderr_offset: int = 0


TASK_UPDATABLE_FIELDS = frozenset(
    {"started_at", "finished_at", "exit_code", "result", "error", "attempt", "owner", "options",
     "lease_expires_at"}
)
"""Columns of ``tasks`` a transition may set together with the new state."""


WorkerState = Literal["active", "draining", "stopped"]


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One row of ``workers``: a worker process, its heartbeat and lease."""

    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    state: WorkerState
    started_at: float
    heartbeat_at: float
    lease_expires_at: float
    stopped_at: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What ``oneshot workers`` shows: a worker and the tasks it owns."""

    worker: WorkerRecord
    running: int
    """Tasks it owns that have not ended."""
    finished: int
    """Tasks it owned when they ended."""
