"""Reading a task's stored output: in pages, from the tail, or following it live."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

import anyio

from durable.records import LogFragment, Stream
from durable.store import Store

PAGE = 32
FOLLOW_INTERVAL = 0.2


async def fragments_after(store: Store, task_id: str, streams: Collection[Stream] | None,
                          after_seq: int = -1) -> AsyncIterator[LogFragment]:
    """Every stored fragment after ``after_seq``, a page at a time (memory stays bounded)."""
    while True:
        page = await store.read_logs(task_id, streams=streams, after_seq=after_seq, limit=PAGE)
        for fragment in page:
            yield fragment
        if len(page) < PAGE:
            return
        after_seq = page[-1].seq


async def tail(store: Store, task_id: str, streams: Collection[Stream] | None,
               lines: int) -> tuple[int, list[tuple[Stream, bytes]]]:
    """The last ``lines`` lines as (stream, bytes) pieces, and the last seq they cover.

    Reads fragments backwards only as far as needed; a final line without a newline counts.
    """
    count = PAGE
    while True:
        rows = await store.read_logs(task_id, streams=streams, tail=count)
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
    pieces = []
    for fragment in rows:
        if skip < len(fragment.data):
            pieces.append((fragment.stream, fragment.data[max(skip, 0):]))
        skip -= len(fragment.data)
    return (rows[-1].seq if rows else -1), pieces


async def follow(store: Store, task_id: str, streams: Collection[Stream] | None,
                 after_seq: int, is_finished: FinishedCheck) -> AsyncIterator[LogFragment]:
    """New fragments as they are committed, until the task has ended and all are read.

    The task's terminal transition is committed after its last fragment, so reading once more
    after seeing it ended catches everything: no gap, no duplicate.
    """
    while True:
        finished = await is_finished()
        async for fragment in fragments_after(store, task_id, streams, after_seq):
            after_seq = fragment.seq
            yield fragment
        if finished:
            return
        await anyio.sleep(FOLLOW_INTERVAL)


class FinishedCheck:
    def __init__(self, store: Store, task_id: str) -> None:
        self._store, self._task_id = store, task_id

    async def __call__(self) -> bool:
        return (await self._store.get_task(self._task_id)).state.is_terminal
