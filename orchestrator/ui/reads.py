"""What the dashboard reads from the store, as the JSON its API returns.

Task lists are paged by a cursor on (created_at, id), so tasks created at the same instant are
neither skipped nor repeated. Output is paged by bytes: a page holds whole fragments, at most
``limit`` of them and ``max_bytes`` bytes, but always at least one, so a fragment larger than
``max_bytes`` (LogCapture makes them up to 1 MiB) still gets through. Fragments are read in
small, growing batches, so a page of a gigabyte of output reads little more than it returns.
"""

from __future__ import annotations

import binascii
from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from durable.records import LogFragment, Stream, TaskRecord
from durable.states import TaskState
from durable.store import Store, TaskCursor
from orchestrator import render

CURSOR_PATTERN = r"^\d+(\.\d+)?(e[+-]?\d+)?_[0-9a-f]{32}$"
"""A task cursor as the API shows it: ``<created_at>_<id>``."""
FIRST_BATCH = 8
MAX_BATCH = 128


def cursor_text(task: TaskRecord) -> str:
    return f"{task.created_at!r}_{task.id}"


def parse_cursor(text: str) -> TaskCursor:
    """The inverse of :func:`cursor_text`, for text matching :data:`CURSOR_PATTERN`."""
    created_at, _, task_id = text.partition("_")
    return float(created_at), task_id


async def task_page(store: Store, *, states: Collection[TaskState] | None, name: str | None,
                    limit: int, before: str | None) -> dict[str, Any]:
    """Up to ``limit`` tasks, newest first, after the cursor ``before``; and the next cursor."""
    rows = await store.list_tasks(states=states, name=name, limit=limit + 1,
                                  cursor=parse_cursor(before) if before else None)
    page = rows[:limit]
    return {"tasks": [row.as_json() for row in page],
            "next": cursor_text(page[-1]) if len(rows) > limit else None}


async def task_detail(store: Store, task: TaskRecord) -> dict[str, Any]:
    """``oneshot show --json`` for one task, plus how much output is stored."""
    history = await store.history(task.id)
    steps = await store.load_steps(task.id)
    fragments, size = await store.log_size(task.id)
    return {**render.task_json(task, history, steps),
            "output": {"fragments": fragments, "bytes": size,
                       "dropped_bytes": task.log_dropped_bytes}}


def fragment_json(fragment: LogFragment) -> dict[str, Any]:
    """A fragment as text; with its exact bytes too when they are not valid UTF-8 alone (a
    fragment may also end inside a character that the next one completes)."""
    raw: str | None = None
    try:
        text = fragment.data.decode("utf-8")
    except UnicodeDecodeError:
        text = fragment.data.decode("utf-8", "replace")
        raw = binascii.b2a_base64(fragment.data, newline=False).decode("ascii")
    return {"seq": fragment.seq, "stream": fragment.stream.name.lower(), "at": fragment.at,
            "size": len(fragment.data), "text": text, "base64": raw}


@dataclass(frozen=True, slots=True)
class PageQuery:
    """Which output, and how much of it one page may hold."""

    task_id: str
    streams: Collection[Stream] | None
    limit: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class Page:
    fragments: list[LogFragment]
    """In seq order, whichever way the page was read."""
    more: bool
    """More fragments are stored beyond the page, in the direction it was read."""


async def read_page(store: Store, query: PageQuery, *, after_seq: int = -1,
                    before_seq: int | None = None, backward: bool = False) -> Page:
    """The fragments after ``after_seq``; or, ``backward``, the newest ones before
    ``before_seq`` (None: the newest of all)."""
    fragments = (_fragments(store, query, before_seq, backward=True) if backward
                 else _fragments(store, query, after_seq, backward=False))
    page: list[LogFragment] = []
    size = 0
    more = False
    async with aclosing(fragments):
        async for fragment in fragments:
            if len(page) == query.limit or (page and size + len(fragment.data) > query.max_bytes):
                more = True
                break
            page.append(fragment)
            size += len(fragment.data)
    return Page(page[::-1] if backward else page, more)


async def _fragments(store: Store, query: PageQuery, start: int | None, *, backward: bool
                     ) -> AsyncGenerator[LogFragment, None]:
    """Fragments from ``start`` on, in the reading direction, in batches that grow."""
    batch = FIRST_BATCH
    while True:
        if backward:
            rows = (await store.read_logs(query.task_id, streams=query.streams, tail=batch,
                                          before_seq=start))[::-1]
        else:
            rows = await store.read_logs(query.task_id, streams=query.streams,
                                         after_seq=-1 if start is None else start, limit=batch)
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        start = rows[-1].seq
        batch = min(2 * batch, MAX_BATCH)
