"""The transition table (durable/states.py) and OneshotStateMachine over a MemoryStore."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest

from durable.exceptions import IllegalTransition, StateConflict, StoreError
from durable.memory import MemoryStore
from durable.records import NewTask, TaskKind, Transition
from durable.states import TERMINAL_STATES, TRANSITIONS, TaskState, is_legal
from orchestrator.states import OneshotStateMachine

T = TypeVar("T")
S = TaskState
ENDINGS = {S.COMPLETED, S.FAILED, S.INTERRUPTED}

# Written from DESIGN.md, independently of durable/states.py. RECOVERING -> RECOVERING: another
# orchestrator takes over a recovery whose owner died.
EXPECTED_MOVES: dict[TaskState, set[TaskState]] = {
    S.CREATED: {S.RUNNING, S.RECOVERING} | ENDINGS,
    S.RUNNING: {S.IDLE, S.RECOVERING} | ENDINGS,
    S.IDLE: {S.RUNNING, S.RECOVERING} | ENDINGS,
    S.RECOVERING: {S.RUNNING, S.CREATED, S.RECOVERING} | ENDINGS,
    S.COMPLETED: set(),
    S.FAILED: set(),
    S.INTERRUPTED: set(),
}

PAIRS = list(itertools.product(TaskState, TaskState))


def run(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(body())


async def created_task(store: MemoryStore) -> str:
    task_id = uuid.uuid4().hex
    await store.create_task(NewTask(id=task_id, kind=TaskKind.COMMAND, argv=["true"]))
    return task_id


# -- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_is_legal_matches_transition_table(a: TaskState, b: TaskState) -> None:
    """is_legal(a, b) is exactly membership of b in TRANSITIONS[a] and in the design's table."""
    assert is_legal(a, b) is (b in TRANSITIONS[a])
    assert is_legal(a, b) is (b in EXPECTED_MOVES[a])


def test_transition_table_covers_every_state() -> None:
    """TRANSITIONS has an entry for every state and only names real states."""
    assert set(TRANSITIONS) == set(TaskState)
    assert all(targets <= set(TaskState) for targets in TRANSITIONS.values())


def test_terminal_states_have_no_exits() -> None:
    """COMPLETED, FAILED and INTERRUPTED are terminal and nothing leaves them."""
    assert TERMINAL_STATES == ENDINGS
    for state in TaskState:
        assert state.is_terminal is (state in ENDINGS)
        if state.is_terminal:
            assert TRANSITIONS[state] == frozenset()
        else:
            assert TRANSITIONS[state] & TERMINAL_STATES == TERMINAL_STATES


def test_only_recovery_takeover_moves_to_itself() -> None:
    """Every transition changes the state, except a takeover of RECOVERING."""
    assert [s for s in TaskState if is_legal(s, s)] == [S.RECOVERING]


# -- the state machine ----------------------------------------------------------------------


def test_legal_move_commits_history_row_then_updates_state() -> None:
    """A legal move writes a history row and the store's state, then changes .state."""

    async def body() -> None:
        store = MemoryStore()
        task_id = await created_task(store)
        machine = OneshotStateMachine(store, task_id, S.CREATED, worker="w1")
        row = await machine.transition(S.RUNNING, "spawned", started_at=5.0)
        assert machine.state == S.RUNNING and not machine.is_terminal
        assert (row.from_state, row.to_state, row.reason, row.worker) == (
            S.CREATED, S.RUNNING, "spawned", "w1")
        assert (await store.history(task_id))[-1] == row
        record = await store.get_task(task_id)
        assert (record.state, record.started_at) == (S.RUNNING, 5.0)
        await machine.transition(S.COMPLETED, exit_code=0)
        assert machine.is_terminal

    run(body)


class RecordingStore(MemoryStore):
    """A MemoryStore that records the machine's view during each commit, or fails it."""

    def __init__(self) -> None:
        super().__init__()
        self.machine: OneshotStateMachine | None = None
        self.seen: list[TaskState] = []
        self.fail = False

    async def transition(self, task_id: str, from_state: TaskState, to_state: TaskState, *,
                         reason: str | None = None, worker: str | None = None,
                         fields: Mapping[str, Any] | None = None) -> Transition:
        assert self.machine is not None
        self.seen.append(self.machine.state)
        if self.fail:
            raise StoreError("disk full")
        return await super().transition(task_id, from_state, to_state, reason=reason,
                                        worker=worker, fields=fields)


def test_state_changes_only_after_the_commit() -> None:
    """While the store commits, .state is still the old one; a failed commit leaves it."""

    async def body() -> None:
        store = RecordingStore()
        task_id = await created_task(store)
        machine = store.machine = OneshotStateMachine(store, task_id, S.CREATED)
        await machine.transition(S.RUNNING)
        assert store.seen == [S.CREATED]
        store.fail = True
        with pytest.raises(StoreError):
            await machine.transition(S.IDLE)
        assert machine.state == S.RUNNING
        assert (await store.get_task(task_id)).state == S.RUNNING

    run(body)


@pytest.mark.parametrize(
    ("start", "target"),
    [(S.CREATED, S.IDLE), (S.RUNNING, S.CREATED), (S.COMPLETED, S.RUNNING), (S.FAILED, S.FAILED)],
)
def test_illegal_move_raises_and_writes_nothing(start: TaskState, target: TaskState) -> None:
    """An illegal move raises IllegalTransition; no history row, no state change."""

    async def body() -> None:
        store = MemoryStore()
        task_id = await created_task(store)
        if start != S.CREATED:
            await store.transition(task_id, S.CREATED, start)
        machine = OneshotStateMachine(store, task_id, start)
        history = await store.history(task_id)
        with pytest.raises(IllegalTransition) as caught:
            await machine.transition(target)
        assert (caught.value.from_state, caught.value.to_state) == (start, target)
        assert machine.state == start
        assert await store.history(task_id) == history
        assert (await store.get_task(task_id)).state == start

    run(body)


def test_stale_machine_gets_state_conflict_and_keeps_its_state() -> None:
    """When another writer moved the task first, the commit conflicts and .state stays."""

    async def body() -> None:
        store = MemoryStore()
        task_id = await created_task(store)
        machine = OneshotStateMachine(store, task_id, S.CREATED)
        await store.transition(task_id, S.CREATED, S.INTERRUPTED)
        with pytest.raises(StateConflict):
            await machine.transition(S.RUNNING)
        assert machine.state == S.CREATED

    run(body)


def test_restore_rebuilds_state_from_store() -> None:
    """restore() reads the committed state, accepting an id prefix."""

    async def body() -> None:
        store = MemoryStore()
        task_id = await created_task(store)
        await store.transition(task_id, S.CREATED, S.RUNNING)
        await store.transition(task_id, S.RUNNING, S.IDLE)
        machine = await OneshotStateMachine.restore(store, task_id[:12], worker="w2")
        assert (machine.task_id, machine.state, machine.worker) == (task_id, S.IDLE, "w2")
        await machine.transition(S.RUNNING)
        assert (await store.get_task(task_id)).state == S.RUNNING

    run(body)


def test_transition_if_does_nothing_outside_from_states() -> None:
    """transition_if returns None and writes nothing when the state is not listed."""

    async def body() -> None:
        store = MemoryStore()
        task_id = await created_task(store)
        machine = OneshotStateMachine(store, task_id, S.CREATED)
        assert await machine.transition_if(frozenset({S.RUNNING}), S.IDLE) is None
        assert machine.state == S.CREATED
        assert len(await store.history(task_id)) == 1
        row = await machine.transition_if(frozenset({S.CREATED, S.IDLE}), S.RUNNING)
        assert row is not None and row.to_state == S.RUNNING
        assert str(machine.state) == "RUNNING"  # str(): mypy narrowed .state above

    run(body)


def test_concurrent_moves_of_one_machine_are_serialized() -> None:
    """Racing transition_if calls on one machine see each other's result: one move wins."""

    async def body() -> None:
        store = MemoryStore()
        task_id = await created_task(store)
        machine = OneshotStateMachine(store, task_id, S.CREATED)
        await machine.transition(S.RUNNING)
        rows = await asyncio.gather(
            machine.transition_if(frozenset({S.RUNNING}), S.IDLE, "quiet"),
            machine.transition_if(frozenset({S.RUNNING}), S.COMPLETED, "exited"),
        )
        assert sum(r is not None for r in rows) == 1
        assert len(await store.history(task_id)) == 3

    run(body)
