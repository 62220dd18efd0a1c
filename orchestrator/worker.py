"""The worker loop: claim queued tasks within the concurrency limit until told to stop."""

from __future__ import annotations

import anyio

from orchestrator.orchestrator import AsyncOrchestrator

POLL_INTERVAL = 0.2


async def run_worker(orch: AsyncOrchestrator, stop: anyio.Event, *, queue: str = "default",
                     poll_interval: float = POLL_INTERVAL) -> int:
    """Run queued tasks until ``stop`` is set; returns how many tasks were started.

    A claim is one committed write (owner set on the oldest unowned CREATED task), so two
    workers on one database never take the same task.
    """
    started = 0
    while not stop.is_set():
        if orch.active < orch.settings.concurrency:
            record = await orch.store.claim_next(worker=orch.worker_id, queue=queue)
            if record is not None:
                orch.start_task(record)
                started += 1
                continue
        with anyio.move_on_after(poll_interval):
            await stop.wait()
    return started
