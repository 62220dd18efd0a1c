"""An in-memory store with the same contract as the SQL one, for ``--no-persist``."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from durable.exceptions import StateConflict, StoreError, TaskNotFound
from durable.leases import DEFAULT_LEASE_SECONDS
from durable.records import (
    TASK_UPDATABLE_FIELDS,
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
from durable.store import (
    SpoolOffsets,
    TaskCursor,
    glob_matches,
    is_valid_id_prefix,
    resolve_prefix,
)


class MemoryStore:
    """Keeps everything in dictionaries; lost when the process ends. Implements ``Store``."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskRecord] = {}
        self._history: dict[str, list[Transition]] = {}
        self._logs: dict[str, list[LogFragment]] = {}
        self._seqs: dict[str, set[int]] = {}
        self._steps: dict[str, dict[int, StepCheckpoint]] = {}
        self._processes: dict[str, ProcessHandle] = {}
        self._workers: dict[str, WorkerRecord] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_task(
        self, task: NewTask, *, reason: str | None = None, worker: str | None = None
    ) -> TaskRecord:
        if task.id in self._tasks:
            raise StoreError(f"task {task.id} already exists")
        now = time.time()
        record = TaskRecord(
            id=task.id, kind=task.kind, name=task.name, state=TaskState.CREATED,
            created_at=now, updated_at=now, argv=task.argv, cwd=task.cwd,
            workflow=task.workflow, input=task.input, queue=task.queue, options=task.options,
            owner=task.owner, lease_expires_at=task.lease_expires_at,
        )
        self._tasks[task.id] = record
        self._history[task.id] = [
            Transition(task.id, None, TaskState.CREATED, now, reason, worker, record.attempt)
        ]
        self._logs[task.id] = []
        self._seqs[task.id] = set()
        return record

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
        fields = dict(fields or {})
        unknown = set(fields) - TASK_UPDATABLE_FIELDS
        if unknown:
            raise StoreError(f"cannot set {sorted(unknown)} with a transition")
        current = self._tasks.get(task_id)
        if (current is None or current.state != from_state
                or (takeover_from is not None and current.fence != takeover_from)):
            raise StateConflict(task_id, from_state, current.state if current else None)
        now = time.time()
        if "owner" in fields:
            fields["fence"] = current.fence + 1
        updated = replace(current, state=to_state, updated_at=now, **fields)
        self._tasks[task_id] = updated
        row = Transition(task_id, from_state, to_state, now, reason, worker, updated.attempt)
        self._history[task_id].append(row)
        return row

    async def append_logs(
        self, fragments: Sequence[LogFragment], *, offsets: SpoolOffsets | None = None
    ) -> None:
        for fragment in fragments:
            if fragment.task_id not in self._tasks:
                raise StoreError(f"log fragment for unknown task {fragment.task_id}")
        keys = {(f.task_id, f.seq) for f in fragments}
        if len(keys) < len(fragments) or any(seq in self._seqs[tid] for tid, seq in keys):
            raise StoreError("log fragment with a (task_id, seq) already stored")
        for fragment in fragments:
            self._logs[fragment.task_id].append(fragment)
            self._seqs[fragment.task_id].add(fragment.seq)
        if offsets is not None and offsets[0] in self._processes:
            task_id, stdout_offset, stderr_offset = offsets
            self._processes[task_id] = replace(
                self._processes[task_id], stdout_offset=stdout_offset, stderr_offset=stderr_offset
            )

    async def claim(self, *, worker: str, queues: Sequence[str] = ("default",), limit: int = 1,
                    lease_seconds: float = DEFAULT_LEASE_SECONDS) -> list[TaskRecord]:
        now = time.time()
        claimed: list[TaskRecord] = []
        for record in sorted(self._tasks.values(), key=lambda r: r.created_at):
            if len(claimed) == limit:
                break
            if record.state == TaskState.CREATED and record.owner is None and (
                record.queue in queues
            ):
                taken = replace(record, owner=worker, updated_at=now, fence=record.fence + 1,
                                lease_expires_at=now + lease_seconds)
                self._tasks[record.id] = taken
                claimed.append(taken)
        return claimed

    async def save_worker(self, worker: WorkerRecord) -> None:
        self._workers[worker.id] = worker

    async def heartbeat(self, worker_id: str, *, state: WorkerState = "active",
                        lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        """One process owns everything in memory: nothing can be taken over, nothing lost."""
        now = time.time()
        expires = now + lease_seconds
        if worker_id in self._workers:
            self._workers[worker_id] = replace(self._workers[worker_id], heartbeat_at=now,
                                               lease_expires_at=expires, state=state)
        for record in list(self._tasks.values()):
            if record.owner == worker_id and not record.state.is_terminal:
                self._tasks[record.id] = replace(record, lease_expires_at=expires)
        return set()

    async def release_lease(self, task_id: str) -> None:
        record = self._tasks.get(task_id)
        if record is not None:
            self._tasks[task_id] = replace(record, owner=None, lease_expires_at=time.time(),
                                           fence=record.fence + 1)

    async def list_workers(self, *, include_stopped: bool = False) -> list[WorkerStatus]:
        rows = []
        for worker in sorted(self._workers.values(), key=lambda w: -w.heartbeat_at):
            if worker.state == "stopped" and not include_stopped:
                continue
            owned = [r for r in self._tasks.values() if r.owner == worker.id]
            finished = sum(1 for r in owned if r.state.is_terminal)
            rows.append(WorkerStatus(worker, len(owned) - finished, finished))
        return rows

    async def get_task(self, task_id: str) -> TaskRecord:
        if not is_valid_id_prefix(task_id):
            raise TaskNotFound(task_id)
        matches = [tid for tid in self._tasks if tid.startswith(task_id)][:2]
        return self._tasks[resolve_prefix(task_id, matches)]

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
        rows = [
            r for r in self._tasks.values()
            if (states is None or r.state in states)
            and (name is None or glob_matches(name, r.name or ""))
            and (since is None or r.created_at >= since)
            and (until is None or r.created_at < until)
            and (cursor is None or ((r.created_at, r.id) > cursor if oldest_first
                                    else (r.created_at, r.id) < cursor))
        ]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=not oldest_first)
        return rows[:limit] if limit is not None else rows

    async def history(self, task_id: str) -> list[Transition]:
        return list(self._history.get(task_id, []))

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
        rows = [
            f for f in self._logs.get(task_id, [])
            if f.seq > after_seq and (streams is None or f.stream in streams)
            and (since is None or f.at >= since) and (before_seq is None or f.seq < before_seq)
        ]
        rows.sort(key=lambda f: f.seq)
        if tail is not None:
            return rows[-tail:] if tail else []
        return rows[:limit] if limit is not None else rows

    async def log_size(self, task_id: str) -> tuple[int, int]:
        rows = self._logs.get(task_id, [])
        return len(rows), sum(len(f.data) for f in rows)

    async def save_step(self, checkpoint: StepCheckpoint) -> None:
        if checkpoint.task_id not in self._tasks:
            raise StoreError(f"step checkpoint for unknown task {checkpoint.task_id}")
        self._steps.setdefault(checkpoint.task_id, {})[checkpoint.seq] = checkpoint

    async def load_steps(self, task_id: str) -> list[StepCheckpoint]:
        steps = self._steps.get(task_id, {})
        return [steps[seq] for seq in sorted(steps)]

    async def unfinished_tasks(self) -> list[TaskRef]:
        rows = sorted(self._tasks.values(), key=lambda r: r.created_at)
        return [TaskRef(r.id, r.kind, r.state.value, r.owner, r.lease_expires_at, record=r)
                for r in rows if not r.state.is_terminal]

    async def fail_corrupt(self, task_id: str, found_state: str, reason: str) -> None:
        current = self._tasks.get(task_id)
        if current is None or current.state.value != found_state:
            raise StateConflict(task_id, found_state, current.state if current else None)
        now = time.time()
        self._tasks[task_id] = replace(current, state=TaskState.FAILED, updated_at=now,
                                       finished_at=now, error=reason)
        self._history[task_id].append(
            Transition(task_id, None, TaskState.FAILED, now, reason, None, current.attempt))

    async def save_process(self, handle: ProcessHandle) -> None:
        if handle.task_id not in self._tasks:
            raise StoreError(f"process handle for unknown task {handle.task_id}")
        self._processes[handle.task_id] = handle

    async def get_process(self, task_id: str) -> ProcessHandle | None:
        return self._processes.get(task_id)

    async def recovery_facts(self, task_ids: Sequence[str]
                             ) -> tuple[dict[str, ProcessHandle], dict[str, int]]:
        handles = {t: self._processes[t] for t in task_ids if t in self._processes}
        seqs = {t: max(f.seq for f in self._logs[t]) + 1 for t in task_ids if self._logs.get(t)}
        return handles, seqs
