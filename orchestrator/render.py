"""How the CLI shows tasks: rich tables and timelines, and the JSON of ``--json``."""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from durable.records import (
    StepCheckpoint,
    StepStatus,
    TaskKind,
    TaskRecord,
    Transition,
    WorkerStatus,
)
from durable.recovery import WAITING_REASON, waiting_for_registration
from durable.states import TaskState
from orchestrator.task import describe_exit
from orchestrator.workflow_task import describe_error

STATE_STYLES = {
    TaskState.CREATED: "cyan",
    TaskState.RUNNING: "bold blue",
    TaskState.IDLE: "yellow",
    TaskState.RECOVERING: "magenta",
    TaskState.COMPLETED: "green",
    TaskState.FAILED: "bold red",
    TaskState.INTERRUPTED: "red",
}


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def task_runtime(task: TaskRecord) -> float | None:
    if task.started_at is None:
        return None
    return (task.finished_at or task.updated_at) - task.started_at


def command_line(task: TaskRecord) -> str:
    if task.argv is not None:
        return shlex.join(task.argv)
    if waiting_for_registration(task):
        return f"{task.workflow} ({WAITING_REASON})"
    return task.workflow or ""


def exit_text(task: TaskRecord) -> str:
    return "-" if task.exit_code is None else describe_exit(task.exit_code)


def state_text(state: TaskState) -> Text:
    return Text(state.value, style=STATE_STYLES[state])


def tasks_table(rows: Sequence[TaskRecord]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "STATE", "EXIT", "CREATED", "RUNTIME", "COMMAND"):
        table.add_column(column, no_wrap=column != "COMMAND", overflow="ellipsis")
    for task in rows:
        table.add_row(
            task.id[:12], task.name or "", state_text(task.state), exit_text(task),
            when(task.created_at), duration(task_runtime(task)), command_line(task),
        )
    return table


def show_task(console: Console, task: TaskRecord, history: Sequence[Transition],
              log_size: tuple[int, int], steps: Sequence[StepCheckpoint]) -> None:
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("id", task.id)
    fields.add_row("name", task.name or "-")
    fields.add_row("kind", task.kind)
    fields.add_row("command", command_line(task))
    fields.add_row("cwd", task.cwd or "-")
    fields.add_row("state", state_text(task.state))
    fields.add_row("exit", exit_text(task))
    if task.error:
        fields.add_row("error", describe_error(task.error) if task.kind == TaskKind.WORKFLOW
                       else task.error)
    fields.add_row("attempt", str(task.attempt))
    fields.add_row("created", when(task.created_at))
    fields.add_row("runtime", duration(task_runtime(task)))
    dropped = (f" ({task.log_dropped_bytes} older bytes dropped by retention)"
               if task.log_dropped_bytes else "")
    fields.add_row("output", f"{log_size[1]} bytes in {log_size[0]} fragments{dropped}")
    console.print(fields)
    console.print()
    console.print(timeline_table(history))
    if steps:
        console.print()
        console.print(steps_table(steps))


def steps_table(steps: Sequence[StepCheckpoint]) -> Table:
    table = Table(title="steps", title_justify="left", box=None, header_style="bold")
    for column in ("SEQ", "STEP", "STATUS", "ATTEMPTS", "DURATION", "ERROR"):
        table.add_column(column)
    for step in steps:
        style = "green" if step.status == StepStatus.COMPLETED else "bold red"
        table.add_row(
            str(step.seq), step.name, Text(step.status, style=style), str(step.attempts),
            duration(step.finished_at - step.started_at),
            describe_error(step.error) if step.error else "",
        )
    return table


def timeline_table(history: Sequence[Transition]) -> Table:
    table = Table(title="timeline", title_justify="left", box=None, header_style="bold")
    for column in ("AT", "+", "FROM", "TO", "REASON"):
        table.add_column(column)
    start = history[0].at if history else 0.0
    for row in history:
        table.add_row(
            when(row.at) + f".{int(row.at * 1000) % 1000:03d}", duration(row.at - start),
            row.from_state.value if row.from_state else "", state_text(row.to_state),
            row.reason or "",
        )
    return table


def task_json(task: TaskRecord, history: Sequence[Transition],
              steps: Sequence[StepCheckpoint]) -> dict[str, Any]:
    data = task.as_json()
    data["transitions"] = [row.as_json() for row in history]
    data["steps"] = [step.as_json() for step in steps]
    return data


def worker_state(status: WorkerStatus, now: float) -> str:
    """active / draining / stopped, or ``lost`` once a live worker's lease has expired."""
    worker = status.worker
    if worker.state != "stopped" and worker.lease_expires_at < now:
        return "lost"
    return worker.state


WORKER_STYLES = {"active": "green", "draining": "yellow", "stopped": "dim", "lost": "bold red"}


def workers_table(rows: Sequence[WorkerStatus], now: float) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("WORKER", "HOST", "PID", "STATE", "HEARTBEAT", "RUNNING", "FINISHED",
                   "QUEUES", "STARTED"):
        table.add_column(column, no_wrap=True)
    for status in rows:
        w = status.worker
        state = worker_state(status, now)
        table.add_row(
            w.id, w.host, str(w.pid), Text(state, style=WORKER_STYLES[state]),
            f"{duration(max(0.0, now - w.heartbeat_at))} ago",
            f"{status.running}/{w.concurrency}", str(status.finished), ",".join(w.queues),
            when(w.started_at),
        )
    return table


def worker_json(status: WorkerStatus, now: float) -> dict[str, Any]:
    w = status.worker
    return {
        "id": w.id, "host": w.host, "pid": w.pid, "state": worker_state(status, now),
        "queues": w.queues, "concurrency": w.concurrency, "started_at": w.started_at,
        "heartbeat_at": w.heartbeat_at, "heartbeat_age": now - w.heartbeat_at,
        "lease_expires_at": w.lease_expires_at, "stopped_at": w.stopped_at,
        "running": status.running, "finished": status.finished,
    }
