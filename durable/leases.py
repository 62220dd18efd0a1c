"""Leases and fencing: how a store knows which tasks it may still write.

A task's owner holds it under a lease (``tasks.lease_expires_at``) that the owner's heartbeat
keeps pushing forward. When the lease passes, the owner is presumed dead and another worker may
take the task over; the takeover increments ``tasks.fence``. Each store remembers the fence it
got for every task it holds (from creating, claiming or taking over the task) and every write
it makes for such a task is guarded by that fence in the same transaction: a worker that was
only paused (SIGSTOP, a long GC, a network partition) and comes back finds the fence moved, gets
:class:`durable.exceptions.LeaseLost`, and writes nothing more for that task.

Writes for tasks the store does not hold (a CLI cancelling another process's task, retention)
are not fenced: they are guarded by state alone, as before leases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from durable.records import TaskRecord
from durable.states import TaskState

DEFAULT_LEASE_SECONDS = 30.0


class Holdings:
    """The owner and fencing token of each task one store holds, by task id.

    A task the store let go of (found lost) keeps its last token in ``retired`` until its
    runner releases it: writes for it stay fenced by that token, so they fail from the moment
    another worker takes it over — forgetting the token earlier would turn them into unfenced
    writes. The release is the runner's last write, after which the token is forgotten, so a
    long-running worker keeps no entry per task it lost.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, int]] = {}
        self._retired: dict[str, int] = {}

    def fence(self, task_id: str) -> int | None:
        """The token to guard a write with; None when this store never held the task."""
        held = self._held.get(task_id)
        return held[1] if held is not None else self._retired.get(task_id)

    def hold(self, record: TaskRecord) -> None:
        if record.owner is not None:
            self.hold_fence(record.id, record.owner, record.fence)

    def let_go(self, task_id: str) -> None:
        """Stop holding the task (its lease was released or lost); keep its token."""
        held = self._held.pop(task_id, None)
        if held is not None:
            self._retired[task_id] = held[1]

    def forget(self, task_id: str) -> None:
        """Drop the task's token: nothing in this store writes for it any more."""
        self._held.pop(task_id, None)
        self._retired.pop(task_id, None)

    def after_move(self, task_id: str, to_state: TaskState, fields: Mapping[str, Any],
                   fence: int) -> None:
        """Track a committed transition: a new owner means a new token (with no owner, the
        task went back to the queue); an ended task needs no token any more."""
        if to_state.is_terminal:
            self.forget(task_id)
        elif "owner" in fields:
            if fields["owner"] is None:
                self.let_go(task_id)
            else:
                self.hold_fence(task_id, fields["owner"], fence)

    def hold_fence(self, task_id: str, owner: str, fence: int) -> None:
        self._held[task_id] = (owner, fence)
        self._retired.pop(task_id, None)

    def held_by(self, owner: str) -> dict[str, int]:
        """The tasks held for ``owner`` and their tokens, as of now."""
        return {task_id: fence for task_id, (holder, fence) in self._held.items()
                if holder == owner}

    def settle(self, owner: str, before: Mapping[str, int],
               found: Mapping[str, tuple[str | None, int]]) -> set[str]:
        """The tasks held for ``owner`` (``before``: id -> token, taken before the database
        was read) that another worker has taken over since: the database (``found``: id ->
        owner, token) shows a newer token and another owner. Let go of them; return them.

        Only a newer token with another owner counts: a task that merely ended, or that this
        store moved meanwhile, is not lost — results of concurrent writes may be processed in
        any order, so what is held *now* cannot be compared with what the read saw."""
        lost = set()
        for task_id, fence in before.items():
            current_owner, current_fence = found.get(task_id, (owner, fence))
            if current_fence > fence and current_owner != owner:
                lost.add(task_id)
                if self.fence(task_id) == fence:
                    self.let_go(task_id)
        return lost
