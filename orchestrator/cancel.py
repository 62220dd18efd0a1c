"""`oneshot cancel`: stop a task, whichever orchestrator started it.

A queued task is simply recorded INTERRUPTED. A running command is stopped through its shim
(verified, then SIGTERM to the process group and SIGKILL after the grace); the orchestrator
following it records INTERRUPTED when the shim reports the stop. If that orchestrator is gone,
the stopped task is an orphan and recovery here settles it the same way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from durable.exceptions import OneshotError, StateConflict
from durable.records import TaskKind, TaskRecord
from durable.states import TaskState
from orchestrator.options import RunOptions
from orchestrator.process import ShimProcess

if TYPE_CHECKING:
    from orchestrator.orchestrator import AsyncOrchestrator

POLL = 0.1
SETTLE_SLACK = 10.0


class CannotCancel(OneshotError):
    def __init__(self, task_id: str, problem: str) -> None:
        super().__init__(f"cannot cancel task {task_id}: {problem}")
        self.task_id = task_id


async def cancel_task(orch: AsyncOrchestrator, record: TaskRecord) -> TaskRecord:
    """Stop ``record``'s task and return it once its INTERRUPTED (or other end) is committed."""
    if record.state.is_terminal:
        raise CannotCancel(record.id, f"it already ended {record.state.value}")
    if record.state is TaskState.CREATED:
        try:
            await orch.store.transition(record.id, TaskState.CREATED, TaskState.INTERRUPTED,
                                        reason="cancelled before it ran", worker=orch.worker_id,
                                        fields={"finished_at": time.time(),
                                                "error": "cancelled"})
            return await orch.store.get_task(record.id)
        except StateConflict:
            record = await orch.store.get_task(record.id)  # it just started: stop it below
    if record.kind == TaskKind.WORKFLOW:
        raise CannotCancel(record.id, "stopping a running workflow from another process is not "
                                      "supported; stop the process that runs it")
    deadline = time.monotonic() + RunOptions.from_json(record.options).grace + SETTLE_SLACK
    stopping = False
    while time.monotonic() < deadline:
        # The process handle is saved just after the RUNNING commit: a cancel landing in
        # between finds it on a later round.
        stopping = stopping or await _stop_shim(orch, record.id)
        current = await orch.store.get_task(record.id)
        if current.state.is_terminal:
            return current
        if await _settled_by_recovery(orch, current):
            continue
        await anyio.sleep(POLL)
    raise CannotCancel(record.id, "it did not stop in time")


async def _stop_shim(orch: AsyncOrchestrator, task_id: str) -> bool:
    """Ask the task's shim to stop its command; False while its process is not recorded."""
    handle = await orch.store.get_process(task_id)
    if handle is None:
        return False
    child = ShimProcess.attach(Path(handle.run_dir), (0, 0))
    if child is not None:
        child.stop()
    return True


async def _settled_by_recovery(orch: AsyncOrchestrator, record: TaskRecord) -> bool:
    """If the task's orchestrator is gone, recover it here (which records the stop)."""
    handles = await orch.recover(only=record.id)
    for handle in handles:
        await handle.outcome()
    return bool(handles)
