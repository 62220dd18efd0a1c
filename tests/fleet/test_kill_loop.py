"""A worker SIGKILLed at random moments under load, restarted each time: nothing lost or doubled.

One `oneshot worker` at a time works a queue of commands and five-step workflows; it is killed
(SIGKILL) at a seeded random moment, a new one starts and recovers what it left, and so on a
bounded number of times, then the last one runs everything to the end. The recovery
invariants must hold every time: every task completes, every command ran exactly once
(reattached, never run again) with its output stored exactly once, every workflow step ran
once except the step a kill interrupted, and no process outlives the run. A longer soak with
more kills is ``benchmarks/soak_kills.py``.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from fleet_support import (
    Fleet,
    assert_each_ran_once,
    everything,
    finished,
    queue_everything,
    stray_processes,
)

from durable.states import TaskState
from tests.support import persisted_only

SEED = 20261126
KILLS = 4
COMMANDS = 60
WORKFLOWS = 10


@persisted_only
@pytest.mark.slow
def test_a_worker_killed_again_and_again_under_load_loses_and_doubles_nothing(
        fleet: Fleet, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    tags = queue_everything(fleet, effects, COMMANDS, WORKFLOWS)
    moments = random.Random(SEED)
    done_before = 0
    for kill in range(KILLS):
        worker = fleet.start_worker()
        # Kill once this worker has finished something (or at once, now and then): a kill
        # lands while commands print and steps run, and sometimes during recovery itself.
        if moments.random() < 0.75:
            fleet.wait(f"progress before kill {kill + 1}",
                       lambda before=done_before: finished(fleet) > before)
        time.sleep(moments.uniform(0.0, 1.5))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        done_before = finished(fleet)
    assert done_before < len(tags), "the kills came too late to interrupt anything"
    last = fleet.start_worker()
    fleet.wait("every task", lambda: finished(fleet) == len(tags))
    last.send_signal(signal.SIGTERM)
    assert last.wait(timeout=60) == 0, fleet.log(KILLS)

    results = everything(fleet, list(tags))
    assert_each_ran_once(results, tags, effects)
    recovered = [task_id for task_id, (_, history, _) in results.items()
                 if any(row.to_state is TaskState.RECOVERING for row in history)]
    assert recovered, "no kill interrupted a task"
    assert stray_processes(fleet) == []
