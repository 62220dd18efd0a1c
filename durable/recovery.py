"""Finding interrupted work: tasks left unfinished by an orchestrator that is gone.

An owner id is ``host:pid:nonce``. An owner is gone when its lease has expired (it has not
heartbeated for ``worker.lease_seconds``: dead, paused or cut off, on any host), and, sooner, on
this host, when its pid no longer exists, or when it is this very process and the owner is not
one of its live orchestrators.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from durable.records import TaskKind, TaskRecord, TaskRef
from durable.states import TaskState
from durable.store import Store

WAITING_REASON = "waiting for a process that registers it"
"""Why an orphaned workflow is left RECOVERING without an owner: no process that recovered it
knew its name (see ``orchestrator.recovery``)."""

LIVE_OWNERS: set[str] = set()
"""Owner ids of the orchestrators open in this process."""

FOLLOWED_TASKS: set[str] = set()
"""Ids of the tasks an orchestrator of this process is running or following right now: never
orphans here, even when a heartbeat is late. A task this process let go of (its writes failed,
say) is not in it, and is recovered like any other once its lease has passed."""


def waiting_for_registration(record: TaskRecord) -> bool:
    """Whether a workflow waits, unowned, for a process that registers its name."""
    return (record.kind == TaskKind.WORKFLOW and record.state is TaskState.RECOVERING
            and record.owner is None)


def owner_is_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner not in LIVE_OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and only waits to be reaped (Linux ``/proc``; else False).

    ``kill(pid, 0)`` succeeds on a zombie: a killed orchestrator whose parent has not reaped
    it yet would otherwise count as alive and its tasks would not be recovered.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


@dataclass(frozen=True, slots=True)
class Orphans:
    """What a scan found: readable orphaned tasks, and rows too corrupt to read."""

    tasks: list[TaskRecord]
    corrupt: list[tuple[TaskRef, str]]


async def find_orphans(store: Store) -> Orphans:
    """Unfinished tasks whose owner is gone, oldest first (queued, unowned tasks excluded).

    One query; a row that cannot be read (bad JSON, unknown state) is reported with its
    problem instead of stopping the scan.
    """
    tasks, corrupt = [], []
    gone: dict[str, bool] = {}
    now = time.time()
    for ref in await store.unfinished_tasks():
        if ref.owner is None and ref.state == TaskState.CREATED.value:
            continue  # queued: a worker claims it
        if ref.id in FOLLOWED_TASKS:
            continue  # run by this very process: alive, even if its heartbeat is late
        if ref.owner is not None:
            if ref.owner not in gone:
                gone[ref.owner] = owner_is_gone(ref.owner)
            expired = ref.lease_expires_at is not None and ref.lease_expires_at < now
            if not (gone[ref.owner] or expired):
                continue
        if ref.record is not None:
            tasks.append(ref.record)
        else:
            corrupt.append((ref, ref.problem or "unreadable row"))
    return Orphans(tasks, corrupt)
