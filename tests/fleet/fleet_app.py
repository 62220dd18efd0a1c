"""The workflow the fleet tests queue for a fleet of `oneshot worker` processes.

Each of its five steps appends ``TAG K`` to the side-effect file named in its input when its
body runs, then sleeps a little so that a worker killed or paused mid-run is likely to be inside
a step. Workers load it with ``--import fleet_app`` (this directory on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from durable import durable, workflow
from durable.step import DurableStep

WORKFLOW_NAME = "fleet.five_steps"
STEP_COUNT = 5
STEP_SECONDS = 0.1


def make_step(k: int) -> DurableStep[Any, int]:
    async def step(value: int, tag: str, effects_file: str) -> int:
        fd = os.open(effects_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{tag} {k}\n".encode())  # one write: whole lines, any writers
        finally:
            os.close(fd)
        await anyio.sleep(STEP_SECONDS)
        return value * 10 + k

    step.__qualname__ = f"step_{k}"
    return durable(name=f"fleet.step-{k}")(step)


STEPS = [make_step(k) for k in range(1, STEP_COUNT + 1)]


@workflow(name=WORKFLOW_NAME)
async def five_steps(tag: str, effects_file: str) -> int:
    value = 0
    for step in STEPS:
        value = await step(value, tag, effects_file)
    return value


EXPECTED_RESULT = 12345
