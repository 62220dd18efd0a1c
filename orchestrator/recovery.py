"""Resuming interrupted work when an orchestrator starts, or on `oneshot recover`.

Each orphan (see :mod:`durable.recovery`) is first taken over with a guarded transition to
RECOVERING that also sets this orchestrator as owner, so two recoverers never resume the same
task: the second one's guarded update finds another state and skips it. Then:

- a workflow resumes from its checkpoints by its registered name with its stored input (or ends
  FAILED if the name is not registered here, and the others still resume);
- a command is recorded INTERRUPTED: it ran as a child of the dead orchestrator, with nobody
  left reading its output, so it cannot be reattached.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from durable.exceptions import StateConflict
from durable.records import TaskKind, TaskRecord
from durable.recovery import find_orphans
from durable.states import TaskState

if TYPE_CHECKING:
    from orchestrator.orchestrator import AsyncOrchestrator, TaskHandle


async def recover_orphans(orch: AsyncOrchestrator) -> list[TaskHandle]:
    """Take over every orphaned task; returns the handles of the workflows resumed."""
    handles = []
    for record in await find_orphans(orch.store):
        taken = await _take_over(orch, record)
        if taken is None:
            continue
        if taken.kind == TaskKind.WORKFLOW:
            handles.append(orch.start_task(taken))
        else:
            await orch.store.transition(
                taken.id, TaskState.RECOVERING, TaskState.INTERRUPTED,
                reason=f"orchestrator {record.owner} died while the command ran; its process "
                       "was not supervised and cannot be reattached",
                worker=orch.worker_id, fields={"finished_at": time.time()},
            )
    return handles


async def _take_over(orch: AsyncOrchestrator, record: TaskRecord) -> TaskRecord | None:
    try:
        await orch.store.transition(
            record.id, record.state, TaskState.RECOVERING,
            reason=f"owner {record.owner} is gone; recovered by {orch.worker_id}",
            worker=orch.worker_id, fields={"owner": orch.worker_id},
        )
    except StateConflict:
        return None  # someone else moved it first
    return replace(record, state=TaskState.RECOVERING, owner=orch.worker_id)
