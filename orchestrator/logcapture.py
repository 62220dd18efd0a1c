"""Batched, memory-capped capture of a task's output into ``log_fragments``.

Output is appended to an in-memory buffer; consecutive chunks of one stream are coalesced into
fragments of up to ``fragment_bytes``. A flusher loop (:meth:`run`, started beside the reader)
hands the buffer to the store as one batch when it reaches ``batch_bytes`` or when
``flush_interval`` has passed. One flush is in flight at a time while the reader goes on
reading, so reading overlaps committing; when buffered plus in-flight bytes exceed
``memory_cap``, :meth:`write` itself flushes, waiting for the in-flight flush first —
backpressure goes to the reader (and through the pipe to the child), never to unbounded memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from durable.records import LogFragment, Stream
from durable.store import SpoolOffsets, Store

Tee = Callable[[Stream, bytes], None]


@dataclass(slots=True)
class _Chunk:
    stream: Stream
    data: bytearray
    at: float
    spool_end: int | None
    """How far the stream's spool file is read with this chunk (None: count the bytes)."""


class LogCapture:
    def __init__(
        self,
        store: Store,
        task_id: str,
        *,
        batch_bytes: int = 1 << 20,
        flush_interval: float = 0.2,
        memory_cap: int = 16 << 20,
        fragment_bytes: int = 1 << 20,
        next_seq: int = 0,
        offsets: tuple[int, int] | None = None,
        tee: Tee | None = None,
    ) -> None:
        self._store = store
        self.task_id = task_id
        self._batch_bytes = batch_bytes
        self._flush_interval = flush_interval
        self._memory_cap = max(memory_cap, batch_bytes)
        self._fragment_bytes = fragment_bytes
        self._tee = tee
        self._next_seq = next_seq
        # How far each spool file is stored; None when the output does not come from a spool.
        self._offsets = dict(zip(Stream, offsets, strict=True)) if offsets is not None else None
        self._buffer: list[_Chunk] = []
        self._buffered = 0
        self._in_flight = 0
        self._flush_lock = anyio.Lock()
        self._flush_wanted = anyio.Event()
        self.bytes_captured = 0
        self.last_output_at = time.monotonic()

    async def write(self, stream: Stream, data: bytes, spool_end: int | None = None) -> None:
        """Buffer ``data``; ``spool_end`` is the spool file's offset just past it, stored with
        it (the file may have been read again from its start: see ShimProcess.attach)."""
        if not data:
            return
        self.last_output_at = time.monotonic()
        self.bytes_captured += len(data)
        if self._tee is not None:
            self._tee(stream, data)
        last = self._buffer[-1] if self._buffer else None
        if last is not None and last.stream == stream and len(last.data) + len(data) <= (
            self._fragment_bytes
        ):
            last.data.extend(data)
            last.spool_end = spool_end
        else:
            self._buffer.append(_Chunk(stream, bytearray(data), time.time(), spool_end))
        self._buffered += len(data)
        if self._buffered + self._in_flight > self._memory_cap:
            await self.flush()  # waits for the in-flight flush first: backpressure
        elif self._buffered >= self._batch_bytes:
            self._flush_wanted.set()

    async def run(self) -> None:
        """Flush when a batch is full or the interval has passed; runs until cancelled."""
        while True:
            with anyio.move_on_after(self._flush_interval):
                await self._flush_wanted.wait()
            self._flush_wanted = anyio.Event()
            await self.flush()

    async def flush(self) -> None:
        """Commit everything buffered so far; returns after the commit."""
        async with self._flush_lock:
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            size, self._buffered = self._buffered, 0
            fragments = []
            for chunk in batch:
                fragments.append(LogFragment(self.task_id, chunk.stream, self._next_seq,
                                             chunk.at, bytes(chunk.data)))
                self._next_seq += 1
                if self._offsets is not None:
                    self._offsets[chunk.stream] = (
                        self._offsets[chunk.stream] + len(chunk.data) if chunk.spool_end is None
                        else chunk.spool_end)
            self._in_flight = size
            try:
                with anyio.CancelScope(shield=True):
                    await self._store.append_logs(fragments, offsets=self._spool_offsets())
            finally:
                self._in_flight = 0

    def _spool_offsets(self) -> SpoolOffsets | None:
        if self._offsets is None:
            return None
        return self.task_id, self._offsets[Stream.STDOUT], self._offsets[Stream.STDERR]
