"""Conversion between database rows and records, shared by the read and write paths."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from durable.exceptions import CorruptTask
from durable.records import (
    LogFragment,
    ProcessHandle,
    StepCheckpoint,
    Stream,
    TaskRecord,
    Transition,
    WorkerRecord,
)
from durable.states import TaskState

TASK_COLUMNS = (
    "id", "name", "kind", "argv", "cwd", "workflow", "input", "queue", "state", "created_at",
    "updated_at", "started_at", "finished_at", "exit_code", "result", "error", "attempt", "owner",
    "options", "log_dropped_bytes", "lease_expires_at", "fence",
)


def encode_argv(argv: list[str] | None) -> str | None:
    return None if argv is None else json.dumps(argv)


def task_from_row(row: Mapping[str, Any]) -> TaskRecord:
    """The record of a ``tasks`` row; :class:`CorruptTask` if it cannot be read back."""
    try:
        return _task_record(row)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptTask(str(row.get("id")), f"{type(exc).__name__}: {exc}") from exc


def corrupt_reason(exc: CorruptTask) -> str:
    """The reason (and error) a corrupt task is failed with."""
    return f"corrupt state: {exc.problem}"


def _task_record(row: Mapping[str, Any]) -> TaskRecord:
    argv = row["argv"]
    if argv is not None:
        argv = json.loads(argv)
        if not (isinstance(argv, list) and all(isinstance(arg, str) for arg in argv)):
            raise ValueError("argv is not a list of strings")
    return TaskRecord(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        state=TaskState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        argv=argv,
        cwd=row["cwd"],
        workflow=row["workflow"],
        input=row["input"],
        queue=row["queue"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        exit_code=row["exit_code"],
        result=row["result"],
        error=row["error"],
        attempt=row["attempt"],
        owner=row["owner"],
        options=row["options"],
        log_dropped_bytes=row["log_dropped_bytes"],
        lease_expires_at=row["lease_expires_at"],
        fence=row["fence"],
    )


def transition_from_row(row: Mapping[str, Any]) -> Transition:
    from_state = row["from_state"]
    return Transition(
        task_id=row["task_id"],
        from_state=None if from_state is None else TaskState(from_state),
        to_state=TaskState(row["to_state"]),
        at=row["at"],
        reason=row["reason"],
        worker=row["worker"],
        attempt=row["attempt"],
    )


def fragment_from_row(row: Mapping[str, Any]) -> LogFragment:
    return LogFragment(
        task_id=row["task_id"],
        stream=Stream(row["stream"]),
        seq=row["seq"],
        at=row["at"],
        data=bytes(row["data"]),
    )


def step_from_row(row: Mapping[str, Any]) -> StepCheckpoint:
    return StepCheckpoint(
        task_id=row["task_id"],
        seq=row["seq"],
        name=row["name"],
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        attempts=row["attempts"],
        result=row["result"],
        error=row["error"],
    )


HANDLE_COLUMNS = (
    "task_id", "attempt", "run_dir", "host", "boot_id", "shim_pid", "shim_start", "pid",
    "pid_start", "pgid", "stdout_offset", "stderr_offset",
)


def handle_from_row(row: Mapping[str, Any]) -> ProcessHandle:
    return ProcessHandle(**{column: row[column] for column in HANDLE_COLUMNS})


WORKER_COLUMNS = (
    "id", "host", "pid", "queues", "concurrency", "state", "started_at", "heartbeat_at",
    "lease_expires_at", "stopped_at",
)


def worker_from_row(row: Mapping[str, Any]) -> WorkerRecord:
    values = {column: row[column] for column in WORKER_COLUMNS}
    return WorkerRecord(**{**values, "queues": json.loads(values["queues"])})
