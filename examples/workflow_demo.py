"""A five-step workflow you can kill mid-way and resume: finished steps are not run again.

    python examples/workflow_demo.py start    # start a new run; kill it during any step
    python examples/workflow_demo.py          # resume what was interrupted
    PYTHONPATH=examples oneshot recover --import workflow_demo   # or resume with the CLI

The database is the one Oneshot uses everywhere (``ONESHOT_DATABASE__URL``, ``--db`` for the
CLI, or the default file in your user data directory). Each step sleeps
``DEMO_STEP_SECONDS`` (default 1) so there is time to kill it.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import anyio

from durable import durable, workflow
from orchestrator import AsyncOrchestrator

STEP_SECONDS = float(os.environ.get("DEMO_STEP_SECONDS", "1"))


def announce(number: int, name: str) -> None:
    print(f"  [{number}/5] {name}: running ...", flush=True)


# Steps and the workflow have explicit names: a run started with `python workflow_demo.py`
# lives in module __main__, one resumed by `--import workflow_demo` in module workflow_demo,
# and a resumed run finds its steps by name.
@durable(name="demo.fetch")
def fetch(source: str) -> list[int]:
    """A sync step: it runs in a worker thread."""
    announce(1, "fetch")
    time.sleep(STEP_SECONDS)
    return [len(part) for part in source.split()]


@durable(name="demo.clean")
async def clean(values: list[int]) -> list[int]:
    announce(2, "clean")
    await anyio.sleep(STEP_SECONDS)
    return [v for v in values if v > 1]


@durable(name="demo.transform")
async def transform(values: list[int]) -> list[int]:
    announce(3, "transform")
    await anyio.sleep(STEP_SECONDS)
    return [v * v for v in values]


@durable(name="demo.total")
async def total(values: list[int]) -> int:
    announce(4, "total")
    await anyio.sleep(STEP_SECONDS)
    return sum(values)


@durable(name="demo.report")
async def report(source: str, value: int) -> str:
    announce(5, "report")
    await anyio.sleep(STEP_SECONDS)
    return f"{source!r} -> {value}"


@workflow(name="demo.pipeline")
async def pipeline(source: str) -> str:
    values = await fetch(source)
    print(f"  after fetch:     {values}", flush=True)
    values = await clean(values)
    print(f"  after clean:     {values}", flush=True)
    values = await transform(values)
    print(f"  after transform: {values}", flush=True)
    value = await total(values)
    print(f"  after total:     {value}", flush=True)
    return await report(source, value)


async def start() -> None:
    async with AsyncOrchestrator() as orch:
        handle = await orch.start(pipeline, "the quick brown fox jumps over a lazy dog")
        print(f"workflow task {handle.id} started on {orch.settings.database.url}", flush=True)
        print(f"result: {await handle.result()}", flush=True)


async def resume() -> None:
    async with AsyncOrchestrator() as orch:  # resumes interrupted workflows as it opens
        handles = orch.resumed
        if not handles:
            print("nothing to resume", flush=True)
        for handle in handles:
            print(f"resuming workflow task {handle.id}", flush=True)
            outcome = await handle.outcome()
            print(f"{handle.id}: {outcome.state.value} {outcome.result or outcome.error}",
                  flush=True)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "resume"
    if command not in ("start", "resume"):
        raise SystemExit(f"usage: {sys.argv[0]} [start|resume]")
    # Ctrl-C kills this demo outright, like `kill -9`, so the run stays resumable. (Left to
    # asyncio, Ctrl-C would stop the orchestrator cleanly and record the run INTERRUPTED:
    # a deliberate stop, which is final and not resumed.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    anyio.run(start if command == "start" else resume)


if __name__ == "__main__":
    main()
