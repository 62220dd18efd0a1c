"""A fleet of three `oneshot worker` processes sharing one database, with real kills.

300 short commands and 30 five-step workflows are queued; three workers share them. Mid-run
one worker is SIGKILLed (its tasks are taken over by the others: commands reattached, workflows
resumed from their checkpoints) and another is SIGSTOPped past its lease (the others take its
tasks over; after SIGCONT it writes nothing more for them). Every task completes; every command
ran once; every workflow step's side effect happened once, except a step that was running in a
worker when it was killed or paused.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from fleet_support import (
    LEASE_SECONDS,
    Fleet,
    assert_each_ran_once,
    everything,
    finished,
    held_by,
    queue_everything,
    taken_over_from,
    worker_ids,
)

from durable.states import TaskState
from tests.support import persisted_only


@persisted_only
@pytest.mark.slow
def test_three_workers_share_the_queue_through_a_kill_and_a_pause(fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    """All tasks complete exactly once through a SIGKILL (both engines) and a SIGSTOP past
    the lease (PostgreSQL); the paused worker writes nothing for what was taken from it."""
    # On SQLite a worker paused in the middle of a commit holds the database's one write lock:
    # every other writer waits until it resumes, leases or not. Pausing is a PostgreSQL case.
    pausing = fleet.database.kind == "postgres"
    effects = tmp_path / "effects"
    killed, paused, steady = (fleet.start_worker() for _ in range(3))
    fleet.wait("three workers", lambda: len(worker_ids(fleet)) == 3)
    tags = queue_everything(fleet, effects)
    ids = worker_ids(fleet)

    fleet.wait("a fifth of the tasks", lambda: finished(fleet) >= len(tags) // 5)
    killed.kill()
    killed.wait()
    paused_id = ids[paused.pid]
    if pausing:
        fleet.wait("half of the tasks", lambda: finished(fleet) >= len(tags) // 2)
        fleet.wait("the worker to pause to hold tasks", lambda: bool(held_by(fleet, paused_id)))
        paused.send_signal(signal.SIGSTOP)
        held = held_by(fleet, paused_id)
        # Some of it: a task whose row the paused worker holds locked mid-statement cannot be
        # taken over until it resumes (and then finishes it itself, its lease intact).
        fleet.wait("the others to take over some of what it held",  # once its lease passed
                   lambda: bool(held - held_by(fleet, paused_id)))
        time.sleep(LEASE_SECONDS)  # more takeovers while it stays paused
        paused.send_signal(signal.SIGCONT)
    fleet.wait("every task", lambda: finished(fleet) == len(tags))
    for proc in (paused, steady):
        proc.send_signal(signal.SIGTERM)
    for index, proc in ((1, paused), (2, steady)):
        assert proc.wait(timeout=60) == 0, fleet.log(index)

    results = everything(fleet, list(tags))
    assert_each_ran_once(results, tags, effects)

    # The killed worker's tasks were taken over; so were some of the paused one's, and once
    # taken over, the paused worker wrote nothing more for them.
    killed_id = ids[killed.pid]
    assert any(taken_over_from(h, killed_id) is not None for _, h, _ in results.values())
    taken_from_paused = 0
    for _, history, _ in results.values():
        index = taken_over_from(history, paused_id)
        if index is not None:
            taken_from_paused += 1
            # Until someone takes the task over again (it may even be the paused worker,
            # legitimately, once resumed), nothing comes from the paused worker.
            later = history[index + 1:]
            retaken = next((i for i, row in enumerate(later)
                            if row.to_state is TaskState.RECOVERING), len(later))
            assert all(row.worker != paused_id for row in later[:retaken]), [
                (row.worker, row.to_state.value, row.reason, row.at) for row in history]
    assert taken_from_paused > 0 or not pausing, fleet.log(1)
