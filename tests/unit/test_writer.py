"""GroupCommitWriter over a fake ``apply_batch`` (plain Python, records every batch)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from durable.exceptions import StoreError
from durable.writer import GroupCommitWriter


class FakeBatches:
    """An ``apply_batch`` that doubles ints, returns ValueError for "bad" and raises on "boom".

    ``delay`` makes each commit take a while on the writer thread, so submits pile up.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[list[Any]] = []
        self.threads: set[str] = set()

    def __call__(self, ops: Sequence[Any]) -> list[Any]:
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if "boom" in ops:
            raise RuntimeError("commit failed")
        self.batches.append(list(ops))
        return [ValueError(f"rejected {op}") if op == "bad" else op * 2 for op in ops]

    @property
    def committed(self) -> list[Any]:
        return [op for batch in self.batches for op in batch]


def run(body: Any) -> Any:
    return asyncio.run(asyncio.wait_for(body(), timeout=5))


def test_concurrent_submits_share_fewer_commits() -> None:
    """Fifty concurrent submits commit in fewer batches, each caller getting its own result."""
    fake = FakeBatches(delay=0.005)

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        results = await asyncio.gather(*(writer.submit(i) for i in range(50)))
        await writer.close()
        assert results == [i * 2 for i in range(50)]
        assert len(fake.batches) < 50
        assert sorted(fake.committed) == list(range(50))
        assert (writer.commits, writer.operations) == (len(fake.batches), 50)

    run(body)


def test_batches_never_exceed_max_batch() -> None:
    """With max_batch set, a burst is split into batches of at most that many operations."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake, max_batch=7)
        writer.start()
        await asyncio.gather(*(writer.submit(i) for i in range(30)))
        await writer.close()
        assert max(len(b) for b in fake.batches) <= 7
        assert sorted(fake.committed) == list(range(30))

    run(body)


def test_sequential_submits_commit_one_by_one_in_order() -> None:
    """A caller awaiting each submit pays one commit per operation, in submission order."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        for i in range(5):
            assert await writer.submit(i) == i * 2
        await writer.close()
        assert fake.batches == [[0], [1], [2], [3], [4]]

    run(body)


def test_apply_batch_runs_on_one_dedicated_thread() -> None:
    """Every batch is applied on the writer's own thread, never on the event loop's."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake, name="test-writer")
        writer.start()
        for i in range(3):
            await writer.submit(i)
        await asyncio.gather(*(writer.submit(i) for i in range(10)))
        await writer.close()

    run(body)
    assert len(fake.threads) == 1
    assert next(iter(fake.threads)).startswith("test-writer")


def test_per_op_exception_goes_only_to_its_caller() -> None:
    """An operation's own error is raised to its caller; the rest of its batch commits."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        outcomes = await asyncio.gather(
            writer.submit(1), writer.submit("bad"), writer.submit(3), return_exceptions=True
        )
        await writer.close()
        assert outcomes[0] == 2 and outcomes[2] == 6
        assert isinstance(outcomes[1], ValueError)
        assert fake.batches == [[1, "bad", 3]]

    run(body)


def test_batch_exception_goes_to_every_caller_of_the_batch() -> None:
    """When the commit itself fails, every operation of that batch gets the error."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        outcomes = await asyncio.gather(
            writer.submit(1), writer.submit("boom"), writer.submit(3), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
        assert writer.commits == 0
        # The writer survives a failed batch: later operations still commit.
        assert await writer.submit(4) == 8
        await writer.close()
        assert fake.batches == [[4]]

    run(body)


def test_close_commits_queued_operations_first() -> None:
    """Operations queued before close() are committed and their callers get results."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        pending = [asyncio.create_task(writer.submit(i)) for i in range(3)]
        await asyncio.sleep(0)  # the submits queue their ops; the writer has not run yet
        await writer.close()
        assert [await p for p in pending] == [0, 2, 4]
        assert fake.committed == [0, 1, 2]

    run(body)


def test_close_waits_for_the_batch_in_flight() -> None:
    """close() during a slow commit returns only after that batch committed."""
    fake = FakeBatches(delay=0.05)

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        pending = asyncio.create_task(writer.submit(21))
        await asyncio.sleep(0.01)  # the batch is now committing on the writer thread
        await writer.close()
        assert pending.done()
        assert await pending == 42

    run(body)


def test_submit_after_close_raises_store_error() -> None:
    """A closed writer refuses new operations with StoreError."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake)
        writer.start()
        await writer.submit(1)
        await writer.close()
        with pytest.raises(StoreError):
            await writer.submit(2)
        assert fake.committed == [1]

    run(body)


def test_submit_before_start_raises_store_error() -> None:
    """A writer that was never started refuses operations instead of hanging."""

    async def body() -> None:
        writer = GroupCommitWriter(FakeBatches())
        with pytest.raises(StoreError):
            await writer.submit(1)
        await writer.close()

    run(body)


def test_max_wait_groups_sequential_bursts() -> None:
    """With max_wait, submits arriving shortly after one another share a commit."""
    fake = FakeBatches()

    async def body() -> None:
        writer = GroupCommitWriter(fake, max_wait=0.05)
        writer.start()

        async def late(i: int, delay: float) -> Any:
            await asyncio.sleep(delay)
            return await writer.submit(i)

        await asyncio.gather(late(1, 0), late(2, 0.01), late(3, 0.02))
        await writer.close()
        assert fake.batches == [[1, 2, 3]]

    run(body)
