"""The worker loop: claim queued tasks within the concurrency limit until told to stop, take
over the tasks of workers whose lease expired, run the periodic housekeeping jobs (retention,
backups) beside it, and drain cleanly at the end.

Claims are the store's: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` inside the claiming
``UPDATE``, so concurrent workers on any number of machines skip each other's rows instead of
waiting on them; on SQLite the single writer serializes claims. Either way a task is claimed
once, with the claimer as owner, a lease, and a new fencing token.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import anyio

from durable.exceptions import OneshotError
from durable.records import WorkerRecord
from orchestrator.orchestrator import AsyncOrchestrator

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
"""Seconds between claims while the queue is empty (a task ending here claims at once)."""


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """``run`` every ``interval`` seconds while the worker runs (first run after one interval)."""

    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    queues: Sequence[str] = ("default",)
    poll_interval: float = POLL_INTERVAL
    drain_grace: float = 60.0
    """Seconds a stopping worker lets its running tasks finish before handing them over."""


async def run_worker(orch: AsyncOrchestrator, stop: anyio.Event,
                     options: WorkerOptions = WorkerOptions(),
                     jobs: Sequence[PeriodicJob] = ()) -> int:
    """Run queued tasks until ``stop`` is set, then drain; returns how many were claimed.

    Draining: no more claims; running tasks get ``drain_grace`` seconds to finish; those still
    running are handed over (their processes keep running, their leases expire at once, and
    another worker takes them over: reattached on this host, by the missing-process fallback
    elsewhere; workflows resume from their last checkpoint).
    """
    now = time.time()
    record = WorkerRecord(
        id=orch.worker_id, host=socket.gethostname(), pid=os.getpid(), queues=list(options.queues),
        concurrency=orch.settings.concurrency, state="active", started_at=now, heartbeat_at=now,
        lease_expires_at=orch.lease_expiry())
    await orch.store.save_worker(record)
    takeover = PeriodicJob("takeover", orch.lease_seconds / 2, orch.recover)
    claimed = 0
    async with anyio.create_task_group() as housekeeping:
        for job in (takeover, *jobs):
            housekeeping.start_soon(_every, job, stop, name=f"job {job.name}")
        while not stop.is_set():
            free = orch.settings.concurrency - orch.active
            if free > 0:
                try:
                    records = await orch.store.claim(
                        worker=orch.worker_id, queues=options.queues, limit=free,
                        lease_seconds=orch.lease_seconds)
                except Exception as exc:  # the server restarting, ...: never stop the worker
                    logger.warning("claim failed, retrying: %s", exc,
                                   exc_info=not isinstance(exc, OneshotError))
                    records = []
                for task in records:
                    orch.start_task(task)
                claimed += len(records)
                if len(records) == free:
                    continue  # the queue may hold more: claim again once a slot frees
            await _wait_any(stop, orch, options.poll_interval)
        housekeeping.cancel_scope.cancel()
    await _drain(orch, record, options.drain_grace)
    return claimed


async def _wait_any(stop: anyio.Event, orch: AsyncOrchestrator, timeout: float) -> None:
    """Until stop, a task ending here, or ``timeout`` (which also covers a task that ended
    just before this started waiting)."""
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as waiters:
            async def first(wait: Callable[[], Awaitable[object]]) -> None:
                await wait()
                waiters.cancel_scope.cancel()

            waiters.start_soon(first, stop.wait)
            waiters.start_soon(first, orch.wait_for_task_end)


async def _drain(orch: AsyncOrchestrator, record: WorkerRecord, grace: float) -> None:
    orch.worker_state = "draining"
    await orch.store.save_worker(replace(record, state="draining", heartbeat_at=time.time()))
    with anyio.move_on_after(grace):
        await _until_idle(orch)
    orch.hand_over()
    await _until_idle(orch)
    now = time.time()
    orch.worker_state = "stopped"
    await orch.store.save_worker(replace(record, state="stopped", heartbeat_at=now,
                                         stopped_at=now))


async def _until_idle(orch: AsyncOrchestrator) -> None:
    while orch.active:
        with anyio.move_on_after(POLL_INTERVAL):
            await orch.wait_for_task_end()


async def _every(job: PeriodicJob, stop: anyio.Event) -> None:
    """Run the job every interval; a failed run (database unreachable, a lock timeout) is
    reported and tried again next time instead of stopping the worker."""
    while True:
        with anyio.move_on_after(job.interval):
            await stop.wait()
        if stop.is_set():
            return
        try:
            await job.run()
        except* Exception as failed:  # raised alone or from the job's task group
            logger.warning("%s failed, retrying in %.0f s: %s", job.name, job.interval,
                           "; ".join(str(exc) for exc in failed.exceptions),
                           exc_info=not all(isinstance(e, OneshotError) for e in failed.exceptions))
