"""Store fixtures: every implementation of the Store contract, ready to open in a test's loop.

The tests run each scenario with ``asyncio.run``, so the fixtures hand out *unopened* stores;
the ``run`` fixture opens a store inside the scenario's event loop and closes it afterwards. A
store handed out here may be opened and closed several times (once per hypothesis example):
its data outlives each close (a file for SQLite, a schema for PostgreSQL, the object itself for
memory).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from durable.records import NewTask, TaskKind
from durable.store import Store
from tests.support import Database, make_store

T = TypeVar("T")


@pytest.fixture
def store(database: Database) -> Store:
    """Each Store implementation in turn, on the ``database`` fixture's kinds: memory, SQLite,
    PostgreSQL (unopened; use the ``run`` fixture)."""
    return make_store(database)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite database path under ``tmp_path`` (the file does not exist yet)."""
    return tmp_path / "db" / "oneshot.db"


def run_in(store: Store, body: Callable[[Store], Awaitable[T]]) -> T:
    """Open ``store`` in a new event loop, run ``body(store)``, close the store."""

    async def main() -> T:
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _new_task(**overrides: Any) -> NewTask:
    values: dict[str, Any] = {"id": uuid.uuid4().hex, "kind": TaskKind.COMMAND, "argv": ["true"]}
    values.update(overrides)
    return NewTask(**values)


@pytest.fixture
def run() -> Callable[[Store, Callable[[Store], Awaitable[Any]]], Any]:
    """``run(store, body)``: open the store in a new event loop, await ``body(store)``, close."""
    return run_in


@pytest.fixture
def new_task() -> Callable[..., NewTask]:
    """Factory: a command task with a fresh id; keyword arguments override any field."""
    return _new_task
