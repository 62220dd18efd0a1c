"""The shipped migrations: upgrade/downgrade round trip, migrated schema equals the models.

Every scenario runs against SQLite (a file under tmp_path) and PostgreSQL (a fresh schema);
engines are created and disposed inside each test's own event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from durable import migrate
from durable.engine import ConnectionOptions, create_engine
from durable.exceptions import StoreError
from durable.schema import metadata

TABLES = set(metadata.tables)

EngineFactory = Callable[[], AsyncEngine]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_engine(request: pytest.FixtureRequest, tmp_path: Path) -> EngineFactory:
    """Creates an engine on an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        options = ConnectionOptions(f"sqlite+aiosqlite:///{tmp_path / 'oneshot.db'}")
        return lambda: create_engine(options)
    schema = request.getfixturevalue("pg_schema")
    return schema.create_engine  # type: ignore[no-any-return]


def run_with(make_engine: EngineFactory, scenario: Callable[[AsyncEngine], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        engine = make_engine()
        try:
            return await scenario(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def stamped_versions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def schema_diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


def test_upgrade_creates_tables_and_stamps_head(make_engine: EngineFactory) -> None:
    """Upgrading an empty database creates the four tables and records the head revision."""

    async def scenario(engine: AsyncEngine) -> None:
        await migrate.upgrade(engine)
        assert await table_names(engine) == TABLES | {"alembic_version"}
        assert await stamped_versions(engine) == [migrate.head_revision()]
        assert await migrate.current_revision(engine) == migrate.head_revision()

    run_with(make_engine, scenario)


def test_downgrade_to_base_and_upgrade_again_round_trips(make_engine: EngineFactory) -> None:
    """Downgrading to base drops every table; upgrading again rebuilds the same schema."""

    async def scenario(engine: AsyncEngine) -> None:
        await migrate.upgrade(engine)
        await migrate.downgrade(engine, "base")
        assert await table_names(engine) == {"alembic_version"}
        assert await migrate.current_revision(engine) is None
        await migrate.upgrade(engine)
        assert await table_names(engine) == TABLES | {"alembic_version"}
        assert await migrate.current_revision(engine) == migrate.head_revision()

    run_with(make_engine, scenario)


def test_migrated_schema_equals_metadata(make_engine: EngineFactory) -> None:
    """Autogenerate finds no difference between the migrated database and durable.schema."""

    async def scenario(engine: AsyncEngine) -> list[Any]:
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            return await conn.run_sync(schema_diff)

    assert run_with(make_engine, scenario) == []


def test_check_reports_up_to_date_and_integrity(make_engine: EngineFactory) -> None:
    """check() says not up to date on an empty database, up to date and healthy after upgrade."""

    async def scenario(engine: AsyncEngine) -> tuple[migrate.SchemaCheck, migrate.SchemaCheck]:
        before = await migrate.check(engine)
        await migrate.upgrade(engine)
        return before, await migrate.check(engine)

    before, after = run_with(make_engine, scenario)
    assert before.current is None
    assert not before.up_to_date
    assert after.current == after.head == migrate.head_revision()
    assert after.up_to_date
    assert after.healthy
    if after.quick_check is not None:  # SQLite
        assert after.quick_check == ["ok"]
        assert after.foreign_key_problems == 0


@pytest.mark.parametrize("content", [os.urandom(4096), b"just some notes, not a database\n" * 8])
@pytest.mark.parametrize("action", ["upgrade", "current_revision", "check"])
def test_non_database_file_raises_store_error(tmp_path: Path, content: bytes, action: str) -> None:
    """A file that is not SQLite gives StoreError (driver error kept), not a raw sqlite3 error."""
    path = tmp_path / "oneshot.db"
    path.write_bytes(content)
    options = ConnectionOptions(f"sqlite+aiosqlite:///{path}")

    async def scenario(engine: AsyncEngine) -> None:
        await getattr(migrate, action)(engine)

    with pytest.raises(StoreError, match="not a database") as raised:
        run_with(lambda: create_engine(options), scenario)
    cause = raised.value.__cause__
    assert isinstance(getattr(cause, "orig", cause), sqlite3.DatabaseError)


def extra_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Point durable.migrate at a copy of the migrations plus a revision 9999 running body."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = migrate.head_revision()
    (scripts / "versions" / "9999_extra.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n"
        f"revision = '9999'\ndown_revision = {head!r}\nbranch_labels = depends_on = None\n"
        f"def upgrade():\n{body}\ndef downgrade():\n    pass\n"
    )
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", scripts)


def seed_one_task(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO tasks (id, kind, state, created_at, updated_at)"
            " VALUES ('t1', 'command', 'CREATED', 1.0, 1.0)"
        )
        conn.execute("INSERT INTO task_states (task_id, to_state, at) VALUES ('t1', 'CREATED', 1)")
        conn.execute("INSERT INTO log_fragments (task_id, seq, stream, at, data) "
                     "VALUES ('t1', 0, 1, 1.0, x'00ff')")
    conn.close()


def count_rows(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_sqlite_batch_rebuild_of_parent_table_keeps_child_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding `tasks` in batch mode does not cascade-delete its history and output."""
    path = tmp_path / "oneshot.db"
    options = ConnectionOptions(f"sqlite+aiosqlite:///{path}")

    async def first(engine: AsyncEngine) -> None:
        await migrate.upgrade(engine)

    run_with(lambda: create_engine(options), first)
    seed_one_task(path)
    extra_revision(tmp_path, monkeypatch, (
        "    with op.batch_alter_table('tasks', recreate='always') as batch:\n"
        "        batch.add_column(sa.Column('note', sa.Text()))\n"
    ))

    async def second(engine: AsyncEngine) -> tuple[str | None, int]:
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
        return await migrate.current_revision(engine), foreign_keys

    assert run_with(lambda: create_engine(options), second) == ("9999", 1)
    assert count_rows(path, "task_states") == 1
    assert count_rows(path, "log_fragments") == 1


def test_sqlite_failed_migration_rolls_back_its_ddl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revision failing halfway leaves the SQLite schema and version as they were."""
    path = tmp_path / "oneshot.db"
    options = ConnectionOptions(f"sqlite+aiosqlite:///{path}")
    head = migrate.head_revision()
    extra_revision(tmp_path, monkeypatch, (
        "    op.create_table('extra', sa.Column('id', sa.Integer, primary_key=True))\n"
        "    op.execute('SELECT * FROM no_such_table')\n"
    ))

    async def scenario(engine: AsyncEngine) -> tuple[str | None, set[str]]:
        await migrate.upgrade(engine, head)
        with pytest.raises(OperationalError, match="no_such_table"):
            await migrate.upgrade(engine)
        return await migrate.current_revision(engine), await table_names(engine)

    assert run_with(lambda: create_engine(options), scenario) == (
        head,
        TABLES | {"alembic_version"},
    )


def test_shipped_alembic_ini_runs_without_configuring_logging(tmp_path: Path) -> None:
    """The `alembic` command path (env.py building its own engine) migrates and leaves logging."""
    path = tmp_path / "by-hand.db"
    config = Config(str(migrate.MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", f"sqlite+aiosqlite:///{path}")
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    app_logger = logging.getLogger("oneshot.test")  # fileConfig() would disable it

    command.upgrade(config, "head")

    assert (list(root.handlers), root.level) == before
    assert not app_logger.disabled
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (migrate.head_revision(),)
        ]
    finally:
        conn.close()


def test_head_constant_matches_the_shipped_revisions() -> None:
    """durable.migrate.HEAD (the fast up-to-date check) names alembic's head revision."""
    assert migrate.head_revision() == migrate.HEAD
