"""One task, live: its output and its state as server-sent events.

Three kinds of event: ``task`` (the task's detail, sent first and again whenever it changes:
state, timeline, steps, output size), ``log`` (one output fragment; the event id is its seq, so an
EventSource that reconnects resumes after the last fragment it got, through Last-Event-ID) and
``end`` (the task has ended and all of its output was sent; the stream then closes).

As ``oneshot logs -f`` does, each round reads the task before its output: the terminal
transition is committed after the last fragment, so the output read after seeing the end is
complete — no gap, no duplicate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.sse import ServerSentEvent

from durable.store import Store
from orchestrator.ui.reads import PageQuery, fragment_json, read_page, task_detail

POLL = 0.3
"""Seconds between two looks at the store (output is flushed every 0.2 s by default)."""


async def task_events(store: Store, query: PageQuery, after_seq: int,
                      stopping: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    """Events of ``query.task_id`` from output seq ``after_seq`` on, until the task ends or
    ``stopping`` is set (the server is shutting down)."""
    shown: dict[str, Any] | None = None
    while True:
        task = await store.get_task(query.task_id)
        detail = await task_detail(store, task)
        if detail != shown:
            shown = detail
            yield ServerSentEvent(event="task", data=detail)
        more = True
        while more:
            page = await read_page(store, query, after_seq=after_seq)
            for fragment in page.fragments:
                yield ServerSentEvent(event="log", id=str(fragment.seq),
                                      data=fragment_json(fragment))
                after_seq = fragment.seq
            more = page.more
        if task.state.is_terminal:
            yield ServerSentEvent(event="end", data={"state": task.state.value})
            return
        with anyio.move_on_after(POLL):
            await stopping.wait()
        if stopping.is_set():
            return

