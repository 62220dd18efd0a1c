"""Reading a task's stored output: in pages, from the tail, since a time, or following it live.

:func:`read_output` is the one entry point (the CLI's ``logs`` and
:meth:`AsyncOrchestrator.logs` use it). Memory stays bounded: fragments are read a page at a
time, and only ``--tail`` holds the last lines it returns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, replace

import anyio

from durable.records import LogFragment, Stream
from durable.store import Store

PAGE = 32
FOLLOW_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class OutputQuery:
    """Which output of a task: streams (None: both, interleaved in original order) and time."""

    task_id: str
    streams: Collection[Stream] | None = None
    since: float | None = None


async def read_output(store: Store, query: OutputQuery, *, tail: int | None = None,
                      follow: bool = False) -> AsyncIterator[LogFragment]:
    """The task's output as fragments in order: all of it, or its last ``tail`` lines (the
    first fragment then cut to where those lines start); with ``follow``, then everything
    committed later until the task has ended."""
    after = -1
    if tail is not None:
        after, fragments = await _tail(store, query, tail)
        for fragment in fragments:
            yield fragment
    source = _follow(store, query, after) if follow else _after(store, query, after)
    async for fragment in source:
        yield fragment


async def _after(store: Store, query: OutputQuery, after_seq: int
                 ) -> AsyncIterator[LogFragment]:
    """Every stored fragment after ``after_seq``, a page at a time."""
    while True:
        page = await store.read_logs(query.task_id, streams=query.streams, after_seq=after_seq,
                                     limit=PAGE, since=query.since)
        for fragment in page:
            yield fragment
        if len(page) < PAGE:
            return
        after_seq = page[-1].seq


async def _tail(store: Store, query: OutputQuery, lines: int) -> tuple[int, list[LogFragment]]:
    """The fragments holding the last ``lines`` lines, and the last seq they cover.

    Reads fragments backwards only as far as needed; a final line without a newline counts.
    """
    count = PAGE
    while True:
        rows = await store.read_logs(query.task_id, streams=query.streams, tail=count,
                                     since=query.since)
        data = b"".join(f.data for f in rows)
        body = data[:-1] if data.endswith(b"\n") else data
        if body.count(b"\n") >= lines or len(rows) < count:
            break
        count *= 4
    cut = len(body)
    for _ in range(lines):
        cut = body.rfind(b"\n", 0, cut)
        if cut < 0:
            break
    skip = len(data) if lines <= 0 else cut + 1
    kept = []
    for fragment in rows:
        if skip < len(fragment.data):
            kept.append(replace(fragment, data=fragment.data[max(skip, 0):]))
        skip -= len(fragment.data)
    return (rows[-1].seq if rows else -1), kept


async def _follow(store: Store, query: OutputQuery, after_seq: int
                  ) -> AsyncIterator[LogFragment]:
    """New fragments as they are committed, until the task has ended and all are read.

    The task's terminal transition is committed after its last fragment, so reading once more
    after seeing it ended catches everything: no gap, no duplicate.
    """
    while True:
        finished = (await store.get_task(query.task_id)).state.is_terminal
        async for fragment in _after(store, query, after_seq):
            after_seq = fragment.seq
            yield fragment
        if finished:
            return
        await anyio.sleep(FOLLOW_INTERVAL)


async def tail_text(store: Store, task_id: str, stream: Stream, lines: int) -> str:
    """The last ``lines`` lines of one stream, decoded (invalid bytes replaced)."""
    fragments = [f async for f in read_output(store, OutputQuery(task_id, [stream]), tail=lines)]
    return b"".join(f.data for f in fragments).decode("utf-8", "replace")
