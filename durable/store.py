"""The storage contract every backend implements, documented once here.

Three implementations: :class:`durable.persistence.PersistenceManager` (SQLite, through
SQLAlchemy for reads and migrations and a group-commit writer for writes),
:class:`durable.postgres.PostgresStore` (PostgreSQL, for workers on many machines) and
:class:`durable.memory.MemoryStore` (``--no-persist``: nothing touches disk). The same contract
tests run against all three.

Write methods return only after the change is committed (write-ahead): a caller may act on the
new state as soon as the call returns, and never before. Writes for a task the store holds
(created with an owner, claimed, or taken over through it) are fenced: they raise
:class:`durable.exceptions.LeaseLost` once another worker has taken the task over (see
:mod:`durable.leases`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from durable.exceptions import TaskNotFound
from durable.leases import DEFAULT_LEASE_SECONDS
from durable.records import (
    LogFragment,
    NewTask,
    ProcessHandle,
    StepCheckpoint,
    Stream,
    TaskRecord,
    TaskRef,
    Transition,
    WorkerRecord,
    WorkerState,
    WorkerStatus,
)
from durable.states import TaskState

SpoolOffsets = tuple[str, int, int]
"""(task id, stdout offset, stderr offset)."""

TaskCursor = tuple[float, str]
"""A position in a task listing: the (created_at, id) of the last task of a page."""


class Store(Protocol):
    async def open(self) -> None:
        """Connect (and migrate, if configured); idempotent."""

    async def close(self) -> None:
        """Commit what is queued, then release every connection."""

    async def create_task(
        self, task: NewTask, *, reason: str | None = None, worker: str | None = None
    ) -> TaskRecord:
        """Insert the task in state CREATED together with its first history row."""

    async def transition(
        self,
        task_id: str,
        from_state: TaskState,
        to_state: TaskState,
        *,
        reason: str | None = None,
        worker: str | None = None,
        fields: Mapping[str, Any] | None = None,
        takeover_from: int | None = None,
    ) -> Transition:
        """Move a task from ``from_state`` to ``to_state`` in one transaction.

        Writes the history row and the current state (plus ``fields``, a subset of
        :data:`durable.records.TASK_UPDATABLE_FIELDS`) only if the task is still in
        ``from_state``; otherwise raises :class:`durable.exceptions.StateConflict` and writes
        nothing. Legality of the move is the state machine's business, not the store's.

        A move that sets ``owner`` is a takeover (or a release) and gives the task a new
        fencing token. ``takeover_from`` is the token the taker read: the move is made only if
        the task still carries it (else StateConflict or LeaseLost, nothing written), so two
        recoverers that read the same orphan can never both take it — even when the first
        has already moved it back to the state the second read.
        """

    async def append_logs(
        self, fragments: Sequence[LogFragment], *, offsets: SpoolOffsets | None = None
    ) -> None:
        """Store output fragments; ``(task_id, seq)`` must be new.

        ``offsets`` (task id, stdout bytes, stderr bytes): how far the task's spool files are
        stored, updated in the same transaction as the fragments, so a reattaching reader
        resumes exactly where the stored output ends.
        """

    async def claim(self, *, worker: str, queues: Sequence[str] = ("default",), limit: int = 1,
                    lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list[TaskRecord]:
        """Atomically take up to ``limit`` of the oldest unowned CREATED tasks of ``queues``
        for ``worker``, oldest first: owner set, lease started, fencing token incremented.
        Concurrent claimers (other workers, other machines) never get the same task."""

    async def save_worker(self, worker: WorkerRecord) -> None:
        """Record (or replace) a worker's row: on start, on a state change, on stop."""

    async def heartbeat(self, worker_id: str, *, state: WorkerState = "active",
                        lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        """Push the leases of the worker and of every unfinished task it owns and this store
        still holds (a task it let go of is left to expire) to now + ``lease_seconds``; return
        the tasks this store held that it no longer owns (taken over after its lease
        expired): it must stop touching them."""

    async def release_lease(self, task_id: str) -> None:
        """Give up a held task without ending it: no owner, its lease expired, a new fencing
        token; any worker may take it over at once. It is the last write this store makes for
        the task: the store forgets its token."""

    async def list_workers(self, *, include_stopped: bool = False) -> list[WorkerStatus]:
        """Workers by last heartbeat, newest first, with the counts of tasks they own;
        stopped ones only if asked."""

    async def get_task(self, task_id: str) -> TaskRecord:
        """One task by id or unique id prefix; raises :class:`TaskNotFound`."""

    async def list_tasks(
        self,
        *,
        states: Collection[TaskState] | None = None,
        limit: int | None = None,
        name: str | None = None,
        since: float | None = None,
        until: float | None = None,
        oldest_first: bool = False,
        cursor: TaskCursor | None = None,
    ) -> list[TaskRecord]:
        """Tasks by creation time, newest first (or oldest first), optionally only those in
        ``states``, whose name matches the glob ``name``, created in ``[since, until)``.

        Tasks created at the same time are ordered by id, so ``cursor`` — the (created_at, id)
        of the last task of a previous page — pages through them without skipping or
        repeating one: only tasks after it in this order are listed.
        """

    async def history(self, task_id: str) -> list[Transition]:
        """Every transition of one task in the order they were committed."""

    async def read_logs(
        self,
        task_id: str,
        *,
        streams: Collection[Stream] | None = None,
        after_seq: int = -1,
        limit: int | None = None,
        tail: int | None = None,
        since: float | None = None,
        before_seq: int | None = None,
    ) -> list[LogFragment]:
        """Fragments in ``seq`` order: those after ``after_seq`` (at most ``limit``), or the
        last ``tail`` ones; only those stored at or after ``since`` and, with ``before_seq``,
        those below it (so ``tail`` with ``before_seq`` pages backwards)."""

    async def log_size(self, task_id: str) -> tuple[int, int]:
        """(number of fragments, total bytes) stored for one task."""

    async def save_step(self, checkpoint: StepCheckpoint) -> None:
        """Store a step's outcome (replacing an earlier one at the same ``seq``)."""

    async def load_steps(self, task_id: str) -> list[StepCheckpoint]:
        """Every checkpoint of one workflow task, in ``seq`` order."""

    async def unfinished_tasks(self) -> list[TaskRef]:
        """Every task not in a terminal state (unknown state values included), oldest first."""

    async def fail_corrupt(self, task_id: str, found_state: str, reason: str) -> None:
        """End a task whose stored state cannot be read: FAILED, guarded by the raw state
        found, with a history row whose ``from_state`` is empty and ``reason`` says why."""

    async def save_process(self, handle: ProcessHandle) -> None:
        """Record (or replace) the process handle of a command task."""

    async def get_process(self, task_id: str) -> ProcessHandle | None:
        """The process handle of a command task, if one was recorded."""

    async def recovery_facts(self, task_ids: Sequence[str]
                             ) -> tuple[dict[str, ProcessHandle], dict[str, int]]:
        """For many tasks at once: their process handles, and the next log ``seq`` of each
        (tasks without output are absent). Recovery reads these once, not per task."""


def glob_to_like(pattern: str) -> str:
    """A shell glob (``*``, ``?``) as a LIKE pattern with ``\\`` as the escape character."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def glob_matches(pattern: str, name: str) -> bool:
    """What ``LIKE glob_to_like(pattern)`` answers on SQLite, in Python (the memory store):
    ``*`` and ``?`` are the only wildcards (``[`` is literal), and case is ignored for ASCII
    letters only."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                    for c in pattern.translate(_ASCII_LOWER))
    return re.fullmatch(regex, name.translate(_ASCII_LOWER), re.DOTALL) is not None


def resolve_prefix(task_id: str, candidates: Sequence[str]) -> str:
    """Pick the single id ``task_id`` names among ids starting with it."""
    if not candidates:
        raise TaskNotFound(task_id)
    if len(candidates) > 1 and task_id not in candidates:
        raise TaskNotFound(task_id, "ambiguous task id prefix")
    return task_id if task_id in candidates else candidates[0]


TASK_ID_LENGTH = 32


def is_valid_id_prefix(task_id: str) -> bool:
    """Task ids are lowercase hex; anything else cannot name a task (and is never put in SQL)."""
    return 0 < len(task_id) <= TASK_ID_LENGTH and all(c in "0123456789abcdef" for c in task_id)
