"""Fixtures shared by every test tier.

PostgreSQL: a fresh schema per test on the server at ``ONESHOT_TEST_PG_URL`` (default: the
local ``test`` database). The tests run each scenario with ``asyncio.run``, so engines are
created (and disposed) inside the test's event loop: the fixtures hand out URLs and engine
factories, never open engines.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tests.support import STORE_KINDS, Database, database_for

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _clean_oneshot_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[None]:
    """The developer's ONESHOT_* variables and config files never leak into a test."""
    for name in list(os.environ):
        if name.startswith("ONESHOT_") and name != "ONESHOT_TEST_PG_URL":
            monkeypatch.delenv(name)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    yield


@pytest.fixture(params=STORE_KINDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """Each kind of store in turn: in memory, a SQLite file, a PostgreSQL schema (narrow it
    with ``tests.support.persisted_only`` / ``sqlite_only``)."""
    return database_for(request.param, request, tmp_path)


@dataclass(frozen=True, slots=True)
class PgSchema:
    """A schema of its own on the test server; engines from it see only that schema."""

    url: str
    name: str

    def create_engine(self, **kwargs: Any) -> AsyncEngine:
        """An async engine whose connections have ``search_path`` set to this schema."""
        connect_args = {"server_settings": {"search_path": self.name}}
        return create_async_engine(self.url, connect_args=connect_args, **kwargs)


async def _execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The test server's URL; skips when it is unreachable, fails instead on CI."""
    url = os.environ.get("ONESHOT_TEST_PG_URL", DEFAULT_PG_URL)
    try:
        asyncio.run(_execute(url, "SELECT 1"))
    except (OSError, DBAPIError) as exc:  # refused, timed out, auth, no such database
        message = f"PostgreSQL unreachable at {url}: {exc!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[PgSchema]:
    """A uniquely named, empty schema, dropped with everything in it after the test."""
    schema = PgSchema(pg_url, f"oneshot_test_{uuid.uuid4().hex[:12]}")
    asyncio.run(_execute(pg_url, f'CREATE SCHEMA "{schema.name}"'))
    try:
        yield schema
    finally:
        asyncio.run(_execute(pg_url, f'DROP SCHEMA "{schema.name}" CASCADE'))
