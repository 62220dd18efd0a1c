"""The shapes of the dashboard's JSON API, as pydantic models: they are its OpenAPI schema.

The values come from the records' ``as_json`` and :mod:`orchestrator.render` — the same JSON
as ``oneshot ls --json`` and ``oneshot show --json`` — and from :mod:`orchestrator.ui.reads`;
these models only declare and document the shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from durable.states import TaskState

EPOCH = "seconds since the epoch"


class TaskSummary(BaseModel):
    """One task, as ``oneshot ls --json`` prints it."""

    id: str
    name: str | None
    kind: Literal["command", "workflow"]
    state: TaskState
    exit_code: int | None
    attempt: int
    created_at: float = Field(description=EPOCH)
    updated_at: float = Field(description=EPOCH)
    started_at: float | None = Field(description=EPOCH)
    finished_at: float | None = Field(description=EPOCH)
    argv: list[str] | None = Field(description="a command's program and arguments")
    workflow: str | None = Field(description="a workflow's registered name")
    error: str | None


class TransitionOut(BaseModel):
    """One committed state change."""

    from_state: TaskState | None = Field(description="none for the first row (creation)")
    to_state: TaskState
    at: float = Field(description=EPOCH)
    reason: str | None
    worker: str | None = Field(description="the orchestrator that committed it")
    attempt: int


class StepOut(BaseModel):
    """One checkpointed step of a workflow."""

    seq: int
    name: str
    status: Literal["completed", "failed"]
    attempts: int
    started_at: float = Field(description=EPOCH)
    finished_at: float = Field(description=EPOCH)
    error: str | None = Field(description='JSON: {"type": ..., "module": ..., "message": ...}')


class OutputSize(BaseModel):
    """How much output is stored for a task."""

    fragments: int
    bytes: int
    dropped_bytes: int = Field(description="oldest output deleted by retention")


class TaskDetail(TaskSummary):
    """One task with its timeline and steps, as ``oneshot show --json`` prints it."""

    transitions: list[TransitionOut]
    steps: list[StepOut]
    output: OutputSize


class TaskPage(BaseModel):
    """A page of tasks, newest first."""

    tasks: list[TaskSummary]
    next: str | None = Field(description="pass as `before` for the next (older) page; "
                                         "none on the last page")


class FragmentOut(BaseModel):
    """A chunk of one stream's output, as it was captured."""

    seq: int = Field(description="orders the fragments of a task across both streams")
    stream: Literal["stdout", "stderr"]
    at: float = Field(description=EPOCH)
    size: int = Field(description="bytes")
    text: str = Field(description="the bytes decoded as UTF-8, invalid ones replaced by U+FFFD")
    base64: str | None = Field(description="the exact bytes, when they are not valid UTF-8 "
                                           "on their own (else none: `text` is exact)")


class LogPage(BaseModel):
    """Whole fragments in seq order, bounded by `limit` and `max_bytes` (at least one)."""

    fragments: list[FragmentOut]
    more: bool = Field(description="more fragments are stored beyond this page in its "
                                   "direction (older for `tail`/`before_seq`, else newer)")


class WorkerOut(BaseModel):
    """A worker, as ``oneshot workers --json`` prints it."""

    id: str
    host: str
    pid: int
    state: Literal["active", "draining", "stopped", "lost"]
    queues: list[str]
    concurrency: int
    started_at: float = Field(description=EPOCH)
    heartbeat_at: float = Field(description=EPOCH)
    heartbeat_age: float = Field(description="seconds")
    lease_expires_at: float = Field(description=EPOCH)
    stopped_at: float | None = Field(description=EPOCH)
    running: int
    finished: int


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str
