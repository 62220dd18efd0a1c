"""Filtering history: `ls` by name, time and order; output since a time, tails, follow."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from durable.records import LogFragment, NewTask, Stream
from durable.states import TaskState
from durable.store import Store
from orchestrator.logview import OutputQuery, read_output

Run = Callable[[Store, Callable[[Store], Awaitable[Any]]], Any]


def test_list_tasks_filters_by_name_glob_and_time(store: Store, run: Run,
                                                  new_task: Callable[..., NewTask]) -> None:
    """Name globs match whole names (`*`, `?`; literal `_`, `%` and `[`) in any ASCII case, the
    same on every store; since/until bound creation."""

    async def body(s: Store) -> dict[str, list[str | None]]:
        for name in ("build-1", "build-2", "test_1", "test%1", "deploy", "a[b]", "ab"):
            await s.create_task(new_task(name=name))
            await anyio.sleep(0.002)
        middle = time.time()
        await s.create_task(new_task(name="build-3"))

        async def names(**query: Any) -> list[str | None]:
            return [t.name for t in await s.list_tasks(**query)]

        return {
            "glob": await names(name="build-*"),
            "any case": await names(name="BUILD-*"),
            "one char": await names(name="test?1"),
            "literal underscore": await names(name="test_*"),
            "literal bracket": await names(name="a[b]"),
            "since": await names(since=middle),
            "until": await names(until=middle, name="build-*"),
            "oldest first": await names(name="build-*", oldest_first=True, limit=2),
        }

    found = run(store, body)
    assert found["glob"] == ["build-3", "build-2", "build-1"]
    assert found["any case"] == found["glob"]
    assert sorted(n or "" for n in found["one char"]) == ["test%1", "test_1"]
    assert found["literal underscore"] == ["test_1"]
    assert found["literal bracket"] == ["a[b]"]
    assert found["since"] == ["build-3"]
    assert found["until"] == ["build-2", "build-1"]
    assert found["oldest first"] == ["build-1", "build-2"]


def test_output_since_a_time_and_tail_lines(store: Store, run: Run,
                                            new_task: Callable[..., NewTask]) -> None:
    """read_output honours --since (by storage time) and --tail (whole lines, across streams)."""

    async def body(s: Store) -> tuple[bytes, bytes, bytes]:
        task = await s.create_task(new_task())
        await s.append_logs([LogFragment(task.id, Stream.STDOUT, 0, 1000.0, b"old 1\nold 2\n")])
        await s.append_logs([LogFragment(task.id, Stream.STDERR, 1, 2000.0, b"new 1\n"),
                             LogFragment(task.id, Stream.STDOUT, 2, 2001.0, b"new 2\nnew")])

        async def joined(query: OutputQuery, **options: Any) -> bytes:
            return b"".join([f.data async for f in read_output(s, query, **options)])

        return (await joined(OutputQuery(task.id, since=1500.0)),
                await joined(OutputQuery(task.id), tail=3),
                await joined(OutputQuery(task.id, [Stream.STDOUT]), tail=2))

    since, tail, stdout_tail = run(store, body)
    assert since == b"new 1\nnew 2\nnew"
    assert tail == b"new 1\nnew 2\nnew"
    assert stdout_tail == b"new 2\nnew"


def test_follow_returns_output_committed_later_until_the_task_ends(
        store: Store, run: Run, new_task: Callable[..., NewTask]) -> None:
    """Following yields what is committed while it waits, and stops once the task ended."""

    async def body(s: Store) -> bytes:
        task = await s.create_task(new_task())
        await s.transition(task.id, TaskState.CREATED, TaskState.RUNNING)
        await s.append_logs([LogFragment(task.id, Stream.STDOUT, 0, time.time(), b"a\n")])
        got: list[bytes] = []

        async def follow() -> None:
            async for fragment in read_output(s, OutputQuery(task.id), follow=True):
                got.append(fragment.data)

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            await anyio.sleep(0.3)
            await s.append_logs([LogFragment(task.id, Stream.STDERR, 1, time.time(), b"b\n")])
            await s.transition(task.id, TaskState.RUNNING, TaskState.COMPLETED)
        return b"".join(got)

    assert run(store, body) == b"a\nb\n"
