"""The Store contract (durable/store.py), run against every store through one fixture.

The SQLite-only tests at the end cover what only a file-backed store can promise: data that
outlives the process, clear errors for unusable files, and the connection pragmas.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from durable.engine import ConnectionOptions
from durable.exceptions import (
    CorruptTask,
    DatabaseUnavailable,
    LeaseLost,
    StateConflict,
    StoreError,
    TaskNotFound,
)
from durable.persistence import PersistenceManager
from durable.records import LogFragment, NewTask, Stream, Transition, WorkerRecord
from durable.states import TaskState
from durable.store import Store
from tests.support import persisted_only

Run = Callable[[Store, Callable[[Store], Awaitable[Any]]], Any]
NewTaskFactory = Callable[..., NewTask]

CREATED, RUNNING, IDLE = TaskState.CREATED, TaskState.RUNNING, TaskState.IDLE
RECOVERING = TaskState.RECOVERING
COMPLETED, FAILED = TaskState.COMPLETED, TaskState.FAILED
OUT, ERR = Stream.STDOUT, Stream.STDERR


def fragment(task_id: str, seq: int, data: bytes, stream: Stream = OUT) -> LogFragment:
    return LogFragment(task_id, stream, seq, time.time(), data)


async def create_spaced(store: Store, tasks: list[NewTask]) -> None:
    """Create tasks one after another with distinct creation times."""
    for task in tasks:
        await store.create_task(task)
        await asyncio.sleep(0.002)


# -- tasks and transitions ------------------------------------------------------------------


def test_create_task_writes_created_state_and_first_history_row(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A new task is CREATED and its history starts with a row from no state."""
    task = new_task(name="build", argv=["make", "-j4"], cwd="/src")

    async def body(store: Store) -> None:
        record = await store.create_task(task, reason="submitted", worker="w1")
        assert record.state == CREATED
        assert (record.id, record.name, record.argv, record.cwd) == (
            task.id, "build", ["make", "-j4"], "/src")
        stored = await store.get_task(task.id)
        assert stored == record
        [first] = await store.history(task.id)
        assert (first.task_id, first.from_state, first.to_state) == (task.id, None, CREATED)
        assert (first.reason, first.worker) == ("submitted", "w1")

    run(store, body)


def test_create_task_with_existing_id_is_rejected(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """Creating a second task with the same id raises StoreError and keeps the first."""
    task = new_task(name="first")

    async def body(store: Store) -> None:
        await store.create_task(task)
        with pytest.raises(StoreError):
            await store.create_task(new_task(id=task.id, name="second"))
        assert (await store.get_task(task.id)).name == "first"
        assert len(await store.history(task.id)) == 1

    run(store, body)


def test_transition_moves_state_and_appends_history(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A transition from the current state commits the new state and a history row."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        row = await store.transition(task.id, CREATED, RUNNING, reason="spawned", worker="w1")
        assert isinstance(row, Transition)
        assert (row.from_state, row.to_state, row.reason, row.worker) == (
            CREATED, RUNNING, "spawned", "w1")
        assert (await store.get_task(task.id)).state == RUNNING
        history = await store.history(task.id)
        assert [(h.from_state, h.to_state) for h in history] == [
            (None, CREATED), (CREATED, RUNNING)]
        assert history[-1] == row

    run(store, body)


def test_transition_from_wrong_state_conflicts_and_writes_nothing(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A transition whose expected state is stale raises StateConflict and changes nothing."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        before = await store.get_task(task.id)
        with pytest.raises(StateConflict) as caught:
            await store.transition(task.id, RUNNING, COMPLETED, fields={"exit_code": 0})
        assert (caught.value.task_id, caught.value.expected, caught.value.actual) == (
            task.id, RUNNING, CREATED)
        assert await store.get_task(task.id) == before
        assert len(await store.history(task.id)) == 1

    run(store, body)


def test_transition_of_unknown_task_conflicts(store: Store, run: Run) -> None:
    """Moving a task that does not exist raises StateConflict with no actual state."""

    async def body(store: Store) -> None:
        with pytest.raises(StateConflict) as caught:
            await store.transition("0" * 32, CREATED, RUNNING)
        assert caught.value.actual is None
        assert await store.history("0" * 32) == []

    run(store, body)


def test_transition_sets_fields_with_the_state(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """exit_code, finished_at and error given with a transition are stored with it."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.transition(task.id, CREATED, RUNNING, fields={"started_at": 10.0})
        await store.transition(
            task.id, RUNNING, FAILED,
            fields={"exit_code": 3, "finished_at": 12.5, "error": "exit status 3"},
        )
        record = await store.get_task(task.id)
        assert (record.state, record.exit_code, record.error) == (FAILED, 3, "exit status 3")
        assert (record.started_at, record.finished_at) == (10.0, 12.5)

    run(store, body)


def test_transition_with_unknown_field_is_rejected(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A field outside TASK_UPDATABLE_FIELDS raises StoreError and nothing is written."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        with pytest.raises(StoreError):
            await store.transition(task.id, CREATED, RUNNING, fields={"state": "COMPLETED"})
        with pytest.raises(StoreError):
            await store.transition(task.id, CREATED, RUNNING, fields={"id; DROP": 1})
        assert (await store.get_task(task.id)).state == CREATED
        assert len(await store.history(task.id)) == 1

    run(store, body)


# -- lookup ---------------------------------------------------------------------------------


def test_get_task_by_full_id_and_unique_prefix(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A task is found by its full id and by any prefix no other task shares."""
    task = new_task(id="abc" + "1" * 29)
    other = new_task(id="abd" + "2" * 29)

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.create_task(other)
        for key in (task.id, "abc", "abc1", task.id[:31]):
            assert (await store.get_task(key)).id == task.id
        assert (await store.get_task("abd")).id == other.id

    run(store, body)


@pytest.mark.parametrize(
    "key",
    ["ab", "ffff", "f" * 32, "ABC", "abc%", "abc_", "x", "", "a" * 33, "' OR 1=1 --"],
    ids=["ambiguous", "unknown-prefix", "unknown-id", "uppercase", "percent", "underscore",
         "non-hex", "empty", "too-long", "sql"],
)
def test_get_task_raises_not_found_for_ambiguous_unknown_or_invalid_id(
    store: Store, run: Run, new_task: NewTaskFactory, key: str
) -> None:
    """Ambiguous prefixes, unknown ids and strings that are not hex ids raise TaskNotFound."""

    async def body(store: Store) -> None:
        await store.create_task(new_task(id="abc" + "1" * 29))
        await store.create_task(new_task(id="abd" + "2" * 29))
        with pytest.raises(TaskNotFound) as caught:
            await store.get_task(key)
        assert caught.value.task_id == key

    run(store, body)


def test_list_tasks_newest_first_with_state_filter_and_limit(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """list_tasks orders by creation time descending, filters by states and honours limit."""
    tasks = [new_task(name=f"t{i}") for i in range(4)]

    async def body(store: Store) -> None:
        await create_spaced(store, tasks)
        await store.transition(tasks[1].id, CREATED, RUNNING)
        await store.transition(tasks[3].id, CREATED, RUNNING)
        names = [r.name for r in await store.list_tasks()]
        assert names == ["t3", "t2", "t1", "t0"]
        assert [r.name for r in await store.list_tasks(states=[RUNNING])] == ["t3", "t1"]
        assert [r.name for r in await store.list_tasks(states={CREATED, RUNNING}, limit=3)] == [
            "t3", "t2", "t1"]
        assert [r.name for r in await store.list_tasks(limit=1)] == ["t3"]
        assert await store.list_tasks(states=[COMPLETED]) == []
        assert await store.list_tasks(states=[]) == []

    run(store, body)


def test_list_tasks_cursor_pages_through_tasks_created_at_the_same_time(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """Paging by (created_at, id) cursor lists every task once, in both orders, even when
    several tasks share a creation time."""
    tasks = [new_task(name=f"t{i}") for i in range(7)]

    async def body(store: Store) -> None:
        for i, task in enumerate(tasks):  # three pairs created at the same instant
            with mock.patch.object(time, "time", lambda i=i: 1_700_000_000.0 + i // 2):
                await store.create_task(task)

        async def pages(size: int, oldest_first: bool) -> list[list[str | None]]:
            found: list[list[str | None]] = []
            cursor = None
            while page := await store.list_tasks(limit=size, cursor=cursor,
                                                 oldest_first=oldest_first):
                found.append([r.name for r in page])
                cursor = (page[-1].created_at, page[-1].id)
            return found

        newest = [r.name for r in await store.list_tasks()]
        assert sorted(newest) == sorted(t.name for t in tasks)
        assert [name for page in await pages(2, False) for name in page] == newest
        assert [name for page in await pages(3, True) for name in page] == newest[::-1]
        assert [len(page) for page in await pages(3, False)] == [3, 3, 1]
        last = (await store.list_tasks())[-1]
        assert await store.list_tasks(cursor=(last.created_at, last.id)) == []

    run(store, body)


def test_history_lists_transitions_in_commit_order(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """history returns every committed transition of one task, oldest first."""
    task, other = new_task(), new_task()
    path = [CREATED, RUNNING, IDLE, RUNNING, IDLE, RUNNING, COMPLETED]

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.create_task(other)
        for a, b in itertools.pairwise(path):
            await store.transition(task.id, a, b, reason=f"{a}->{b}")
        await store.transition(other.id, CREATED, FAILED)
        history = await store.history(task.id)
        assert [h.to_state for h in history] == path
        assert [h.from_state for h in history] == [None, *path[:-1]]
        assert all(h.task_id == task.id for h in history)
        assert [h.at for h in history] == sorted(h.at for h in history)

    run(store, body)


# -- logs -----------------------------------------------------------------------------------


def test_read_logs_filters_by_stream_after_seq_limit_and_tail(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """read_logs returns fragments in seq order, by stream, after a seq, limited or tailed."""
    task = new_task()
    streams = [OUT, ERR, OUT, OUT, ERR, OUT]
    frags = [fragment(task.id, i, f"f{i}".encode(), s) for i, s in enumerate(streams)]

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.append_logs(frags[:3])
        await store.append_logs(frags[3:])

        def seqs(rows: list[LogFragment]) -> list[int]:
            return [f.seq for f in rows]

        assert await store.read_logs(task.id) == frags
        assert seqs(await store.read_logs(task.id, streams=[OUT])) == [0, 2, 3, 5]
        assert seqs(await store.read_logs(task.id, streams=[ERR])) == [1, 4]
        assert seqs(await store.read_logs(task.id, streams=[OUT, ERR])) == [0, 1, 2, 3, 4, 5]
        assert seqs(await store.read_logs(task.id, after_seq=2)) == [3, 4, 5]
        assert seqs(await store.read_logs(task.id, after_seq=1, limit=2)) == [2, 3]
        assert seqs(await store.read_logs(task.id, streams=[OUT], after_seq=0, limit=2)) == [2, 3]
        assert seqs(await store.read_logs(task.id, tail=2)) == [4, 5]
        assert seqs(await store.read_logs(task.id, streams=[ERR], tail=1)) == [4]
        assert seqs(await store.read_logs(task.id, tail=100)) == [0, 1, 2, 3, 4, 5]
        assert await store.read_logs(task.id, after_seq=5) == []
        assert await store.read_logs("0" * 32) == []

    run(store, body)


def test_read_logs_before_seq_pages_backwards(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """before_seq keeps fragments below it: with tail, the page before it, in seq order."""
    task = new_task()
    streams = [OUT, ERR, OUT, OUT, ERR, OUT]

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.append_logs([fragment(task.id, i, b"x", s) for i, s in enumerate(streams)])

        async def seqs(**query: Any) -> list[int]:
            return [f.seq for f in await store.read_logs(task.id, **query)]

        assert await seqs(tail=2, before_seq=4) == [2, 3]
        assert await seqs(tail=10, before_seq=2) == [0, 1]
        assert await seqs(tail=2, before_seq=0) == []
        assert await seqs(streams=[ERR], tail=5, before_seq=4) == [1]
        assert await seqs(after_seq=0, before_seq=3) == [1, 2]

    run(store, body)


def test_log_size_counts_fragments_and_bytes(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """log_size reports how many fragments and bytes one task has stored."""
    task, other = new_task(), new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.create_task(other)
        assert await store.log_size(task.id) == (0, 0)
        await store.append_logs([fragment(task.id, 0, b"abc"), fragment(task.id, 1, b"\x00" * 5)])
        await store.append_logs([fragment(other.id, 0, b"zz")])
        assert await store.log_size(task.id) == (2, 8)
        assert await store.log_size(other.id) == (1, 2)

    run(store, body)


def test_append_logs_for_unknown_task_is_rejected(store: Store, run: Run) -> None:
    """Fragments of a task that does not exist raise StoreError."""

    async def body(store: Store) -> None:
        with pytest.raises(StoreError):
            await store.append_logs([fragment("0" * 32, 0, b"x")])

    run(store, body)


def test_append_logs_with_existing_seq_is_rejected_whole(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A batch reusing a stored (task_id, seq) raises StoreError and stores none of it."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.append_logs([fragment(task.id, 0, b"first")])
        with pytest.raises(StoreError):
            await store.append_logs([fragment(task.id, 1, b"new"), fragment(task.id, 0, b"dup")])
        assert [f.data for f in await store.read_logs(task.id)] == [b"first"]

    run(store, body)


def test_log_bytes_round_trip_nul_and_invalid_utf8(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """NUL bytes, invalid UTF-8 and empty fragments come back exactly as written."""
    task = new_task()
    payloads = [b"\x00", b"\xff\xfe\x80 not utf-8 \xc3\x28", b"", b"a\x00b\r\n\x1b[31m",
                bytes(range(256))]

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.append_logs([fragment(task.id, i, p) for i, p in enumerate(payloads)])
        assert [f.data for f in await store.read_logs(task.id)] == payloads
        assert await store.log_size(task.id) == (len(payloads), sum(map(len, payloads)))

    run(store, body)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.tuples(st.sampled_from([OUT, ERR]), st.binary(max_size=300)),
                       min_size=1, max_size=6))
def test_log_bytes_round_trip_any_bytes(
    store: Store, run: Run, new_task: NewTaskFactory, chunks: list[tuple[Stream, bytes]]
) -> None:
    """Any byte strings on either stream are read back identical, in seq order."""
    task = new_task()  # the store outlives each example: every example gets its own task
    frags = [fragment(task.id, seq, data, stream) for seq, (stream, data) in enumerate(chunks)]

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.append_logs(frags)
        back = await store.read_logs(task.id)
        assert [(f.stream, f.seq, f.data) for f in back] == [
            (f.stream, f.seq, f.data) for f in frags]
        assert await store.log_size(task.id) == (len(frags), sum(len(d) for _, d in chunks))

    run(store, body)


# -- queue ----------------------------------------------------------------------------------


@persisted_only
def test_a_claimed_row_that_cannot_be_read_is_failed_and_the_queue_goes_on(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A queued row whose argv is not JSON could never run: the claim that takes it fails it
    (FAILED, "corrupt state") in the same transaction and hands out the next task instead of
    the same row forever. Reading it back is one clear error, not a crash."""
    bad, good = new_task(name="bad"), new_task(name="good")

    async def body(store: Store) -> None:
        await create_spaced(store, [bad, good])
        async with store.engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text("UPDATE tasks SET argv = '[\"true\", ' WHERE id = :id"),
                               {"id": bad.id})
        with pytest.raises(CorruptTask, match="its stored row is corrupt"):
            await store.get_task(bad.id)
        claimed = await store.claim(worker="w1", limit=5)
        assert [r.name for r in claimed] == ["good"]
        assert await store.claim(worker="w1", limit=5) == []
        history = await store.history(bad.id)
        assert history[-1].to_state is TaskState.FAILED
        assert (history[-1].reason or "").startswith("corrupt state: ")

    run(store, body)


def test_claim_takes_the_oldest_unowned_created_tasks_of_its_queues_once(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """claim hands out the oldest unowned CREATED tasks of the given queues, each only once,
    with the claimer as owner, a lease and a new fencing token."""
    owned = new_task(name="owned", owner="w0")
    running = new_task(name="running")
    elsewhere = new_task(name="elsewhere", queue="gpu")
    first, second, third = new_task(name="first"), new_task(name="second"), new_task(name="3")

    async def body(store: Store) -> None:
        await create_spaced(store, [owned, running, elsewhere, first, second, third])
        await store.transition(running.id, CREATED, RUNNING)
        before = time.time()
        [claimed] = await store.claim(worker="w1", lease_seconds=30)
        assert (claimed.name, claimed.owner, claimed.state, claimed.fence) == (
            "first", "w1", CREATED, 1)
        assert claimed.lease_expires_at is not None
        assert before + 30 <= claimed.lease_expires_at <= time.time() + 30
        assert await store.get_task(first.id) == claimed
        claimed_two = await store.claim(worker="w2", limit=5)
        assert [(r.name, r.owner) for r in claimed_two] == [("second", "w2"), ("3", "w2")]
        assert await store.claim(worker="w1") == []
        both = await store.claim(worker="w3", queues=["gpu", "default"], limit=5)
        assert [r.name for r in both] == ["elsewhere"]
        assert await store.claim(worker="w3", queues=["gpu"]) == []
        assert (await store.get_task(owned.id)).owner == "w0"

    run(store, body)


def test_concurrent_claims_hand_out_a_task_exactly_once(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """Ten workers claiming three tasks at once get each task exactly once."""
    tasks = [new_task() for _ in range(3)]

    async def body(store: Store) -> None:
        await create_spaced(store, tasks)
        results = await asyncio.gather(*(store.claim(worker=f"w{i}") for i in range(10)))
        claimed = [r for batch in results for r in batch]
        assert sorted(r.id for r in claimed) == sorted(t.id for t in tasks)
        for record in claimed:
            assert (await store.get_task(record.id)).owner == record.owner

    run(store, body)


def test_heartbeat_extends_the_leases_of_the_workers_unfinished_tasks(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """A heartbeat pushes the worker row and its unfinished tasks' leases, nobody else's."""
    mine, done, theirs = new_task(), new_task(), new_task()

    async def body(store: Store) -> None:
        await create_spaced(store, [mine, done, theirs])
        await store.claim(worker="w1", limit=2, lease_seconds=5)
        await store.claim(worker="w2", lease_seconds=5)
        await store.transition(done.id, CREATED, FAILED)
        now = time.time()
        await store.save_worker(WorkerRecord(
            id="w1", host="h", pid=1, queues=["default"], concurrency=2, state="active",
            started_at=now, heartbeat_at=now, lease_expires_at=now + 5))
        assert await store.heartbeat("w1", lease_seconds=100) == set()
        leases = {t.id: (await store.get_task(t.id)).lease_expires_at for t in (mine, done, theirs)}
        assert leases[mine.id] is not None and leases[mine.id] >= now + 99
        assert leases[done.id] is not None and leases[done.id] < now + 6
        assert leases[theirs.id] is not None and leases[theirs.id] < now + 6
        [status] = await store.list_workers()
        assert (status.worker.id, status.worker.state, status.running, status.finished) == (
            "w1", "active", 1, 1)
        assert status.worker.lease_expires_at >= now + 99
        await store.save_worker(replace(status.worker, state="stopped", stopped_at=time.time()))
        assert await store.list_workers() == []
        assert [s.worker.state for s in await store.list_workers(include_stopped=True)] == [
            "stopped"]

    run(store, body)


def test_release_lease_expires_it_now(store: Store, run: Run, new_task: NewTaskFactory) -> None:
    """A released task keeps its state, but has no owner, a passed lease and a new token."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        [claimed] = await store.claim(worker="w1", lease_seconds=100)
        await store.transition(task.id, CREATED, RUNNING)
        await store.release_lease(task.id)
        record = await store.get_task(task.id)
        assert (record.owner, record.state, record.fence) == (None, RUNNING, claimed.fence + 1)
        assert record.lease_expires_at is not None and record.lease_expires_at <= time.time()

    run(store, body)


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_transitions_of_different_tasks_all_commit(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """100 concurrent transitions on 100 tasks all commit (sharing commits on SQLite)."""
    tasks = [new_task() for _ in range(100)]

    async def body(store: Store) -> None:
        await asyncio.gather(*(store.create_task(t) for t in tasks))
        commits = store.writer.commits if isinstance(store, PersistenceManager) else 0
        rows = await asyncio.gather(
            *(store.transition(t.id, CREATED, RUNNING, fields={"started_at": 1.0}) for t in tasks)
        )
        assert [r.task_id for r in rows] == [t.id for t in tasks]
        running = await store.list_tasks(states=[RUNNING])
        assert {r.id for r in running} == {t.id for t in tasks}
        if isinstance(store, PersistenceManager):
            assert store.writer.commits - commits < len(tasks)

    run(store, body)


def test_concurrent_transitions_of_one_task_from_same_state_one_wins(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """Two racing moves from the same state: exactly one commits, the other conflicts."""
    task = new_task()

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.transition(task.id, CREATED, RUNNING)
        outcomes = await asyncio.gather(
            store.transition(task.id, RUNNING, COMPLETED, fields={"exit_code": 0}),
            store.transition(task.id, RUNNING, FAILED, fields={"exit_code": 1}),
            return_exceptions=True,
        )
        wins = [o for o in outcomes if isinstance(o, Transition)]
        losses = [o for o in outcomes if isinstance(o, StateConflict)]
        assert (len(wins), len(losses)) == (1, 1)
        record = await store.get_task(task.id)
        assert record.state == wins[0].to_state
        assert record.exit_code == (0 if record.state == COMPLETED else 1)
        assert losses[0].actual == record.state
        history = await store.history(task.id)
        assert [h.to_state for h in history] == [CREATED, RUNNING, record.state]

    run(store, body)


def test_a_takeover_from_a_stale_read_writes_nothing(
    store: Store, run: Run, new_task: NewTaskFactory
) -> None:
    """Two recoverers read the same orphan; the first takes it over and moves it back to the
    state both read; the second's takeover, made from its stale token, must fail whole."""
    task = new_task(owner="host:1:gone", lease_expires_at=0.0)

    async def body(store: Store) -> None:
        await store.create_task(task)
        await store.transition(task.id, CREATED, RUNNING)
        read = await store.get_task(task.id)  # what both recoverers saw
        await store.transition(task.id, RUNNING, RECOVERING, takeover_from=read.fence,
                               fields={"owner": "first", "attempt": 2})
        await store.transition(task.id, RECOVERING, RUNNING)
        with pytest.raises((StateConflict, LeaseLost)):
            await store.transition(task.id, RUNNING, RECOVERING, takeover_from=read.fence,
                                   fields={"owner": "second", "attempt": 2})
        record = await store.get_task(task.id)
        assert (record.state, record.owner, record.fence) == (RUNNING, "first", read.fence + 1)
        assert [h.to_state for h in await store.history(task.id)] == [
            CREATED, RUNNING, RECOVERING, RUNNING]

    run(store, body)


# -- SQLite only ----------------------------------------------------------------------------


def sqlite_store(path: Path) -> PersistenceManager:
    return PersistenceManager(ConnectionOptions(url=f"sqlite+aiosqlite:///{path}"))


def test_sqlite_data_survives_close_and_reopen(
    db_path: Path, run: Run, new_task: NewTaskFactory
) -> None:
    """Tasks, history and logs written before close are read back by a new store."""
    task = new_task(name="kept")

    async def write(store: Store) -> None:
        await store.create_task(task)
        await store.transition(task.id, CREATED, RUNNING)
        await store.append_logs([fragment(task.id, 0, b"\x00out\xff")])

    async def read(store: Store) -> None:
        record = await store.get_task(task.id)
        assert (record.name, record.state) == ("kept", RUNNING)
        assert [h.to_state for h in await store.history(task.id)] == [CREATED, RUNNING]
        assert [f.data for f in await store.read_logs(task.id)] == [b"\x00out\xff"]
        await store.transition(task.id, RUNNING, COMPLETED)

    run(sqlite_store(db_path), write)
    run(sqlite_store(db_path), read)
    record = run(sqlite_store(db_path), lambda s: s.get_task(task.id))
    assert record.state == COMPLETED


def test_sqlite_database_under_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    """A database path whose directory is a file raises DatabaseUnavailable naming the path."""
    (tmp_path / "afile").write_text("not a directory")
    path = tmp_path / "afile" / "x.db"
    store = sqlite_store(path)
    with pytest.raises(DatabaseUnavailable) as caught:
        asyncio.run(store.open())
    assert str(path) in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_sqlite_database_in_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    """A database in a read-only directory raises DatabaseUnavailable naming the path."""
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            asyncio.run(sqlite_store(directory / "x.db").open())
        assert str(directory) in str(caught.value)
    finally:
        directory.chmod(0o700)


@pytest.mark.parametrize(
    "garbage",
    [b"garbage" * 2000, random.Random(0).randbytes(8192), b"SQLite format 3\x00" + b"\xff" * 4080],
    ids=["text", "random", "bad-header"],
)
def test_sqlite_garbage_file_raises_store_error(tmp_path: Path, garbage: bytes) -> None:
    """A file that is not a database raises a StoreError naming it, not a sqlite3 error."""
    path = tmp_path / "junk.db"
    path.write_bytes(garbage)
    with pytest.raises(StoreError) as caught:
        asyncio.run(sqlite_store(path).open())
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage


def test_sqlite_connections_use_wal_and_foreign_keys(
    db_path: Path, run: Run, new_task: NewTaskFactory
) -> None:
    """The file is in WAL mode and both read and write connections enforce foreign keys."""

    async def body(store: Store) -> None:
        assert isinstance(store, PersistenceManager)
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            assert str(mode).lower() == "wal"
        # The writer's connection: a fragment of no task violates the foreign key.
        with pytest.raises(StoreError) as caught:
            await store.append_logs([fragment("0" * 32, 0, b"orphan")])
        assert "FOREIGN KEY" in str(caught.value)

    run(sqlite_store(db_path), body)
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert raw.execute("SELECT count(*) FROM log_fragments").fetchone()[0] == 0
    raw.close()
