"""A five-step workflow the crash tests run in child processes, and SIGKILL where they choose.

Each step appends ``step-K`` to the side-effect file named in the workflow's input when its body
runs, so the file counts how often every step really ran (one file per run: one recovering
process may resume many runs). ``$CRASH_PAUSE`` names where a process stops to be killed:

- ``in-K``: inside step K's body, after its line was written, before its checkpoint;
- ``after-K``: in the workflow right after step K returned, so its checkpoint is committed.

There the process writes the marker file ``$CRASH_MARKER`` (holding the position) and sleeps
until it is killed. The database is ``$ONESHOT_DATABASE__URL``.

    python crash_workflow_app.py start EFFECTS_FILE   # print the task id, run it to the end
    python crash_workflow_app.py recover   # open an orchestrator: it resumes them; wait
    oneshot recover --import crash_workflow_app   # with this directory on PYTHONPATH

The workflow and its steps have explicit names: started from this file they live in
``__main__``, resumed by ``--import`` in ``crash_workflow_app``, and their names must match.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio

from durable import durable, workflow
from durable.step import DurableStep
from orchestrator import AsyncOrchestrator

WORKFLOW_NAME = "crash.five_steps"
STEP_COUNT = 5
SEED = 7
EXPECTED_RESULT = 712345
"""``SEED`` with each step's number appended as a digit."""


async def pause_point(position: str) -> None:
    """Stop here (marker written, sleeping) if ``$CRASH_PAUSE`` names this position."""
    if os.environ.get("CRASH_PAUSE") != position:
        return
    marker = Path(os.environ["CRASH_MARKER"])
    partial = marker.with_suffix(".tmp")
    partial.write_text(position)
    partial.replace(marker)
    await anyio.sleep(120)


def make_step(k: int) -> DurableStep[Any, int]:
    async def step(value: int, effects_file: str) -> int:
        with Path(effects_file).open("a") as effects:
            effects.write(f"step-{k}\n")
        await pause_point(f"in-{k}")
        return value * 10 + k

    step.__qualname__ = f"step_{k}"
    return durable(name=f"crash.step-{k}")(step)


STEPS = [make_step(k) for k in range(1, STEP_COUNT + 1)]


@workflow(name=WORKFLOW_NAME)
async def five_steps(seed: int, effects_file: str) -> int:
    value = seed
    for k, step in enumerate(STEPS, start=1):
        value = await step(value, effects_file)
        await pause_point(f"after-{k}")
    return value


async def start() -> None:
    async with AsyncOrchestrator() as orch:
        handle = await orch.start(five_steps, SEED, sys.argv[2])
        print(handle.id, flush=True)
        print(await handle.result(), flush=True)


async def recover() -> None:
    async with AsyncOrchestrator() as orch:  # resumes interrupted workflows as it opens
        for handle in orch.resumed:
            outcome = await handle.outcome()
            print(handle.id, outcome.state.value, flush=True)


if __name__ == "__main__":
    anyio.run({"start": start, "recover": recover}[sys.argv[1]])
