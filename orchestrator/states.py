"""OneshotStateMachine: a task's state, moved only by committed transitions."""

from __future__ import annotations

from typing import Any

import anyio

from durable.exceptions import IllegalTransition
from durable.records import Transition
from durable.states import TERMINAL_STATES, TRANSITIONS, TaskState, is_legal
from durable.store import Store

__all__ = ["TERMINAL_STATES", "TRANSITIONS", "OneshotStateMachine", "TaskState"]


class OneshotStateMachine:
    """Tracks one task's state and persists every move before it takes effect.

    ``transition`` checks the move against :data:`TRANSITIONS` (an illegal move raises
    :class:`IllegalTransition` and writes nothing), commits it through the store's guarded
    update, and only then changes :attr:`state`. Moves of one task are serialized by a lock,
    so an output reader and an idle watcher cannot race.
    """

    def __init__(self, store: Store, task_id: str, state: TaskState, *,
                 worker: str | None = None) -> None:
        self.store = store
        self.task_id = task_id
        self.worker = worker
        self._state = state
        self._lock = anyio.Lock()

    @classmethod
    async def restore(cls, store: Store, task_id: str, *, worker: str | None = None
                      ) -> OneshotStateMachine:
        """Rebuild the machine from the task's current state in the database."""
        record = await store.get_task(task_id)
        return cls(store, record.id, record.state, worker=worker)

    @property
    def state(self) -> TaskState:
        return self._state

    @property
    def is_terminal(self) -> bool:
        return self._state in TERMINAL_STATES

    async def transition(
        self, to_state: TaskState, reason: str | None = None, **fields: Any
    ) -> Transition:
        async with self._lock:
            return await self._move(to_state, reason, fields)

    async def transition_if(
        self, from_states: frozenset[TaskState], to_state: TaskState, reason: str | None = None,
        **fields: Any,
    ) -> Transition | None:
        """Move only if the task is currently in one of ``from_states``; else do nothing."""
        async with self._lock:
            if self._state not in from_states:
                return None
            return await self._move(to_state, reason, fields)

    async def _move(self, to_state: TaskState, reason: str | None, fields: dict[str, Any]
                    ) -> Transition:
        if not is_legal(self._state, to_state):
            raise IllegalTransition(self.task_id, self._state, to_state)
        # Shielded: once the write is queued it will commit, and our view must follow it.
        with anyio.CancelScope(shield=True):
            row = await self.store.transition(
                self.task_id, self._state, to_state, reason=reason, worker=self.worker,
                fields=fields,
            )
        self._state = to_state
        return row
