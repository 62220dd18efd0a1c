"""Load: 1,000 tasks submitted at once to one worker running 50 at a time.

Every task reaches a terminal state with its whole history (CREATED, RUNNING, COMPLETED) and
its output, each command runs once, and the worker's memory stays bounded: its peak resident
set size is reported in the failure message and checked against a generous bound (it does not
grow with the number of tasks queued or run). ``benchmarks/bench_load.py`` prints the figures.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from fleet_support import (
    Fleet,
    assert_each_ran_once,
    everything,
    finished,
    peak_rss_bytes,
    queue_everything,
)

from durable.states import TaskState
from tests.support import sqlite_only

TASKS = 1000
CONCURRENCY = 50
RSS_BOUND = 400 * 1024 * 1024


@sqlite_only
@pytest.mark.slow
def test_a_thousand_tasks_at_once_all_end_complete_in_bounded_memory(
        fleet: Fleet, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    tags = queue_everything(fleet, effects, commands=TASKS, workflows=0)
    fleet.env["ONESHOT_CONCURRENCY"] = str(CONCURRENCY)
    worker = fleet.start_worker()
    fleet.wait("every task", lambda: finished(fleet) == TASKS)
    peak = peak_rss_bytes(worker.pid)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, fleet.log(0)

    results = everything(fleet, list(tags))
    assert_each_ran_once(results, tags, effects)
    for _, history, _ in results.values():
        assert [row.to_state for row in history] == [
            TaskState.CREATED, TaskState.RUNNING, TaskState.COMPLETED], history
    assert peak < RSS_BOUND, f"worker peak RSS {peak / 2**20:.0f} MiB"
