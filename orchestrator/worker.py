"""The worker loop: claim queued tasks within the concurrency limit until told to stop, and
run the periodic housekeeping jobs (retention, backups) beside it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from orchestrator.orchestrator import AsyncOrchestrator

POLL_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """``run`` every ``interval`` seconds while the worker runs (first run after one interval)."""

    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


async def run_worker(orch: AsyncOrchestrator, stop: anyio.Event, *, queue: str = "default",
                     poll_interval: float = POLL_INTERVAL,
                     jobs: Sequence[PeriodicJob] = ()) -> int:
    """Run queued tasks until ``stop`` is set; returns how many tasks were started.

    A claim is one committed write (owner set on the oldest unowned CREATED task), so two
    workers on one database never take the same task.
    """
    started = 0
    async with anyio.create_task_group() as housekeeping:
        for job in jobs:
            housekeeping.start_soon(_every, job, stop, name=f"job {job.name}")
        while not stop.is_set():
            if orch.active < orch.settings.concurrency:
                record = await orch.store.claim_next(worker=orch.worker_id, queue=queue)
                if record is not None:
                    orch.start_task(record)
                    started += 1
                    continue
            with anyio.move_on_after(poll_interval):
                await stop.wait()
        housekeeping.cancel_scope.cancel()
    return started


async def _every(job: PeriodicJob, stop: anyio.Event) -> None:
    while True:
        with anyio.move_on_after(job.interval):
            await stop.wait()
        if stop.is_set():
            return
        await job.run()
