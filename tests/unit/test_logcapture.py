"""LogCapture (orchestrator/logcapture.py) over a MemoryStore: batching, order, memory cap."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from durable.memory import MemoryStore
from durable.records import LogFragment, NewTask, Stream, TaskKind
from durable.store import SpoolOffsets
from orchestrator.logcapture import LogCapture

OUT, ERR = Stream.STDOUT, Stream.STDERR


class SlowStore(MemoryStore):
    """A MemoryStore whose append_logs takes ``delay`` seconds; counts batches and bytes."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.batches: list[list[LogFragment]] = []
        self.committed = 0

    async def append_logs(
        self, fragments: Sequence[LogFragment], *, offsets: SpoolOffsets | None = None
    ) -> None:
        assert fragments, "an empty batch should never reach the store"
        if self.delay:
            await anyio.sleep(self.delay)
        await super().append_logs(fragments, offsets=offsets)
        self.batches.append(list(fragments))
        self.committed += sum(len(f.data) for f in fragments)


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(body)


async def new_task(store: MemoryStore) -> str:
    task_id = uuid.uuid4().hex
    await store.create_task(NewTask(id=task_id, kind=TaskKind.COMMAND, argv=["true"]))
    return task_id


async def stored(store: MemoryStore, task_id: str) -> list[tuple[Stream, int, bytes]]:
    return [(f.stream, f.seq, f.data) for f in await store.read_logs(task_id)]


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> float:
    """Poll ``condition``; return the seconds it took to hold (fail after ``timeout``)."""
    start = time.monotonic()
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.002)
    return time.monotonic() - start


def test_consecutive_writes_of_one_stream_coalesce() -> None:
    """Chunks of the same stream written in a row become one fragment."""

    async def body() -> None:
        store = SlowStore()
        task_id = await new_task(store)
        capture = LogCapture(store, task_id)
        for chunk in (b"a", b"bc", b"\x00\xff"):
            await capture.write(OUT, chunk)
        await capture.flush()
        assert await stored(store, task_id) == [(OUT, 0, b"abc\x00\xff")]

    run(body)


def test_fragments_are_split_at_fragment_bytes() -> None:
    """A stream's run of chunks starts a new fragment when the next chunk would not fit."""

    async def body() -> None:
        store = SlowStore()
        task_id = await new_task(store)
        capture = LogCapture(store, task_id, fragment_bytes=4)
        for chunk in (b"ab", b"cd", b"ef", b"g"):
            await capture.write(OUT, chunk)
        await capture.flush()
        assert [data for _, _, data in await stored(store, task_id)] == [b"abcd", b"efg"]

    run(body)


def test_interleaved_streams_keep_their_order() -> None:
    """stdout, stderr, stdout become three fragments in that order."""

    async def body() -> None:
        store = SlowStore()
        task_id = await new_task(store)
        capture = LogCapture(store, task_id)
        await capture.write(OUT, b"one")
        await capture.write(ERR, b"two")
        await capture.write(OUT, b"three")
        await capture.flush()
        assert await stored(store, task_id) == [(OUT, 0, b"one"), (ERR, 1, b"two"),
                                                (OUT, 2, b"three")]

    run(body)


def test_seq_increases_across_streams_and_flushes() -> None:
    """seq starts at next_seq and grows by one per fragment, whatever the stream or batch."""

    async def body() -> None:
        store = SlowStore()
        task_id = await new_task(store)
        capture = LogCapture(store, task_id, next_seq=10)
        await capture.write(ERR, b"e1")
        await capture.write(OUT, b"o1")
        await capture.flush()
        await capture.write(OUT, b"o2")
        await capture.write(ERR, b"e2")
        await capture.flush()
        rows = await stored(store, task_id)
        assert [(s, seq) for s, seq, _ in rows] == [(ERR, 10), (OUT, 11), (OUT, 12), (ERR, 13)]
        assert len(store.batches) == 2

    run(body)


def test_flush_writes_everything_buffered() -> None:
    """After flush() returns, every byte written is in the store, per stream in order."""

    async def body() -> None:
        store = SlowStore(delay=0.01)
        task_id = await new_task(store)
        teed: list[tuple[Stream, bytes]] = []
        capture = LogCapture(store, task_id, fragment_bytes=7,
                             tee=lambda s, d: teed.append((s, d)))
        chunks = [(OUT if i % 3 else ERR, bytes([i]) * (i % 5 + 1)) for i in range(40)]
        for stream, data in chunks:
            await capture.write(stream, data)
        await capture.write(OUT, b"")  # empty writes are ignored
        await capture.flush()
        await capture.flush()  # nothing left: no empty batch
        for stream in (OUT, ERR):
            got = b"".join(f.data for f in await store.read_logs(task_id, streams=[stream]))
            assert got == b"".join(d for s, d in chunks if s == stream)
        assert teed == chunks
        assert capture.bytes_captured == store.committed == sum(len(d) for _, d in chunks)
        assert len(store.batches) == 1

    run(body)


def test_memory_cap_bounds_bytes_held_when_store_is_slow() -> None:
    """With a slow store, bytes written but not yet committed never exceed cap + one chunk."""
    chunk, cap = 32, 256

    async def body() -> None:
        store = SlowStore(delay=0.01)
        task_id = await new_task(store)
        written = 0
        max_held = 0

        def tee(_stream: Stream, data: bytes) -> None:
            # Called as each chunk enters the capture: held = buffered + in flight + chunk.
            nonlocal written, max_held
            written += len(data)
            max_held = max(max_held, written - store.committed)

        capture = LogCapture(store, task_id, batch_bytes=64, memory_cap=cap,
                             flush_interval=0.005, tee=tee)
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture.run)
            for i in range(120):
                await capture.write(OUT if i % 2 else ERR, bytes([i]) * chunk)
            await capture.flush()
            tg.cancel_scope.cancel()
        assert store.committed == written == 120 * chunk
        assert cap // 2 < max_held <= cap + chunk
        rows = await store.read_logs(task_id)
        assert [f.seq for f in rows] == list(range(len(rows)))

    run(body)


def test_full_batch_is_flushed_by_run_loop_before_the_interval() -> None:
    """Reaching batch_bytes wakes run() to flush long before flush_interval passes."""

    async def body() -> None:
        store = SlowStore()
        task_id = await new_task(store)
        capture = LogCapture(store, task_id, batch_bytes=100, flush_interval=30.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture.run)
            await capture.write(OUT, b"x" * 60)
            await anyio.sleep(0.05)
            assert store.batches == []  # below batch_bytes: still buffered
            await capture.write(OUT, b"y" * 60)
            took = await wait_until(lambda: _has_bytes(store, 120))
            tg.cancel_scope.cancel()
        assert took < 1.0
        assert len(store.batches) == 1

    run(body)


def test_flush_interval_flushes_a_small_write() -> None:
    """A write far below batch_bytes is committed once flush_interval has passed."""

    async def body() -> None:
        store = SlowStore()
        task_id = await new_task(store)
        capture = LogCapture(store, task_id, flush_interval=0.02)
        async with anyio.create_task_group() as tg:
            tg.start_soon(capture.run)
            await capture.write(ERR, b"hi\n")
            await wait_until(lambda: _has_bytes(store, 3))
            tg.cancel_scope.cancel()
        assert await stored(store, task_id) == [(ERR, 0, b"hi\n")]

    run(body)


async def _has_bytes(store: SlowStore, count: int) -> bool:
    return store.committed >= count
