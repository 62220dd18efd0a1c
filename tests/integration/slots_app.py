"""Workflows that wait on work they started, for tests/integration/test_workflow_slots.py.

A real ``oneshot worker`` loads them with ``--import slots_app`` (this directory on
``PYTHONPATH``); the tests import them as ``tests.integration.slots_app``.
"""

from __future__ import annotations

from durable import durable, workflow
from durable.context import current_runtime
from orchestrator import AsyncOrchestrator, run_command


@workflow(name="slots.runs_a_command")
async def runs_a_command(n: int) -> int:
    out = await run_command(["sh", "-c", f"echo {n}"])
    return int(out.stdout_tail)


@durable(name="slots.square")
async def square(n: int) -> int:
    return n * n


@workflow(name="slots.child")
async def child(n: int) -> int:
    return await square(n)


@workflow(name="slots.waits_for_a_child")
async def waits_for_a_child(n: int) -> int:
    runtime = current_runtime.get()
    assert isinstance(runtime, AsyncOrchestrator)
    handle = await runtime.start(child, n)
    result: int = await handle.result()
    return result


@workflow(name="slots.counted")
async def counted(directory: str) -> None:
    """A command that records how many of its kind run at once (files in ``directory``)."""
    await run_command(["sh", "-c", f"touch {directory}/$$; ls {directory} | wc -l >> "
                                   f"{directory}.peaks; sleep 0.2; rm {directory}/$$"])
