"""Helpers shared by test tiers (imported as ``tests.support``; not a test module)."""

from __future__ import annotations

import random
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from config import OneshotSettings
from durable.engine import ConnectionOptions
from durable.memory import MemoryStore
from durable.persistence import PersistenceManager, store_from_settings
from durable.postgres import PostgresStore
from durable.store import Store
from orchestrator.orchestrator import AsyncOrchestrator

WAIT_LIMIT = 15.0

PERSISTED = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
"""The kinds of database a persisted store runs on."""
STORE_KINDS = ["memory", *PERSISTED]
"""Every kind of store: the ``database`` fixture's parameters (tests/conftest.py)."""

persisted_only = pytest.mark.parametrize("database", PERSISTED, indirect=True)
"""Run a test using the ``database`` fixture on every SQL engine, not in memory."""
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)
"""Run a test using the ``database`` fixture on a SQLite file only."""


@dataclass(frozen=True, slots=True)
class Database:
    """Where one test keeps its data.

    ``kind`` is ``sqlite`` (a file under the test's ``tmp_path``), ``postgres`` (a fresh
    schema on the test server, dropped afterwards) or ``memory`` (persistence off; ``url`` is
    then the SQLite file that must never appear).
    """

    kind: str
    url: str
    schema: str | None = None

    @property
    def persisted(self) -> bool:
        return self.kind != "memory"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file (with persistence off: the one that must never appear)."""
        return ConnectionOptions(self.url).sqlite_path

    def overrides(self) -> dict[str, Any]:
        """Settings overrides (``load_settings(overrides=...)``) selecting this database."""
        return {"persistence.enabled": self.persisted, "database.url": self.url,
                "database.schema": self.schema}

    def env(self) -> dict[str, str]:
        """The same, as ``ONESHOT_*`` variables for CLI processes."""
        env = {"ONESHOT_PERSISTENCE__ENABLED": str(self.persisted).lower(),
               "ONESHOT_DATABASE__URL": self.url}
        if self.schema is not None:
            env["ONESHOT_DATABASE__SCHEMA"] = self.schema
        return env

    def options(self) -> ConnectionOptions:
        """Options for a store opened directly (SQLite: NORMAL sync, the tests never pull
        the plug)."""
        return ConnectionOptions(url=self.url, synchronous="NORMAL", schema=self.schema)


def database_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The :class:`Database` of ``kind`` for the requesting test (postgres: its own schema,
    through the ``pg_schema`` fixture, so the test is skipped when the server is away)."""
    if kind == "postgres":
        schema = request.getfixturevalue("pg_schema")
        return Database(kind, schema.url, schema.name)
    return Database(kind, f"sqlite+aiosqlite:///{tmp_path / 'db' / 'oneshot.db'}")


def make_store(database: Database) -> Store:
    """A new, unopened store on ``database``."""
    if database.kind == "memory":
        return MemoryStore()
    if database.kind == "postgres":
        return PostgresStore(database.options())
    return PersistenceManager(database.options())


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
        options = ConnectionOptions(settings.database.url)
        expected = (MemoryStore if not settings.persistence.enabled
                    else PostgresStore if options.is_postgresql else PersistenceManager)
        assert isinstance(store, expected)
        with anyio.fail_after(WAIT_LIMIT):
            async with AsyncOrchestrator(settings, store=store) as orch:
                return await body(orch)

    return anyio.run(main)


def assert_clean_error(proc: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    """Exit ``code``, no traceback, one line on stderr; returns it."""
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.args, proc.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, (proc.args, lines)
    return lines[0]


def damage_log_pages(db: Path) -> None:
    """Overwrite pages in the middle of a database holding mostly output with garbage."""
    size = db.stat().st_size
    with db.open("r+b") as file:
        file.seek((size // 4096 // 2) * 4096)
        file.write(random.Random(5).randbytes(4096 * 8))


def sh_wait_for_file(path: Path) -> str:
    """A shell snippet that waits (polling) until ``path`` exists: a command's test-driven pause."""
    return f"while [ ! -e {shlex.quote(str(path))} ]; do sleep 0.05; done"
