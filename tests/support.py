"""Helpers shared by test tiers (imported as ``tests.support``; not a test module)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from config import OneshotSettings
from durable.memory import MemoryStore
from durable.persistence import PersistenceManager, store_from_settings
from orchestrator.orchestrator import AsyncOrchestrator

WAIT_LIMIT = 15.0


def oneshot_script() -> str:
    """The installed ``oneshot`` console script (beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "oneshot"
    found = str(beside) if beside.exists() else shutil.which("oneshot")
    assert found, "the oneshot console script is not installed"
    return found


def orchestrate(settings: OneshotSettings,
                body: Callable[[AsyncOrchestrator], Awaitable[Any]]) -> Any:
    """Run ``body`` inside an orchestrator on the store the settings ask for."""

    async def main() -> Any:
        store = store_from_settings(settings)
        expected = PersistenceManager if settings.persistence.enabled else MemoryStore
        assert isinstance(store, expected)
        with anyio.fail_after(WAIT_LIMIT):
            async with AsyncOrchestrator(settings, store=store) as orch:
                return await body(orch)

    return anyio.run(main)
