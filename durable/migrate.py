"""Run the alembic migrations shipped in the ``migrations`` package, from the code.

Everything runs on the caller's engine (same pool, same SQLite pragmas, same PostgreSQL
``search_path``): the alembic command gets the open connection through
``config.attributes["connection"]`` and never configures logging. The ``Config`` is built here;
no ``alembic.ini`` is read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import migrations
from durable.engine import driver_message, server_problem
from durable.exceptions import DatabaseUnavailable, StoreError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD",
    "SchemaCheck",
    "check",
    "current_revision",
    "downgrade",
    "ensure_head",
    "ensure_ready",
    "head_revision",
    "upgrade",
]

HEAD = "0004"
"""The newest revision in ``migrations/versions`` (a test keeps the two equal). Known without
importing alembic, so opening an up-to-date store costs one query, not alembic's start-up."""

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent

# sqlite3 error names meaning "this file cannot be used as a database at all".
_UNUSABLE_FILE = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})

MIGRATION_LOCK = 0x6F6E6573686F74  # "oneshot"
"""The PostgreSQL advisory lock a migration holds: workers starting together on a new database
migrate one after the other (the later ones find it at head) instead of racing on DDL."""


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """What ``oneshot db check`` reports about a database."""

    current: str | None
    """The revision the database is at; None for an empty (never migrated) database."""
    head: str
    """The newest revision this version of Oneshot ships."""
    quick_check: list[str] | None
    """SQLite ``PRAGMA quick_check`` lines (``["ok"]`` when fine); None on PostgreSQL."""
    foreign_key_problems: int | None
    """Rows ``PRAGMA foreign_key_check`` reports (SQLite); None on PostgreSQL, which enforces."""

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def healthy(self) -> bool:
        """Up to date, and SQLite found no corruption and no dangling foreign key."""
        return (
            self.up_to_date
            and self.quick_check in (None, ["ok"])
            and not self.foreign_key_problems
        )


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    # Config values go through ConfigParser interpolation: a '%' in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of Oneshot, as alembic finds it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StoreError(f"no alembic revisions found in {MIGRATIONS_DIR}")
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head", *,
                  schema: str | None = None) -> None:
    """Migrate the database up to ``revision`` (default: the newest), in one transaction.

    ``schema`` (PostgreSQL): the schema the engine's connections work in (see
    :class:`durable.engine.ConnectionOptions`); created first if it does not exist.
    """
    from alembic import command

    await _run_command(engine, command.upgrade, revision, schema)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"``: drop everything)."""
    from alembic import command

    await _run_command(engine, command.downgrade, revision, None)


async def ensure_ready(engine: AsyncEngine, *, auto_upgrade: bool,
                       schema: str | None = None) -> None:
    """What opening a store does: migrate to the newest revision (``auto_upgrade``), or else
    refuse a database that is not there."""
    try:
        if auto_upgrade:
            await ensure_head(engine, schema=schema)
            return
        current = await current_revision(engine)
    except DBAPIError as exc:
        raise DatabaseUnavailable(engine.url.render_as_string(hide_password=True),
                                  driver_message(exc)) from exc
    if current != head_revision():
        raise StoreError(
            f"database is at revision {current or 'none'}, this Oneshot needs "
            f"{head_revision()}: run `oneshot db upgrade`"
        )


async def ensure_head(engine: AsyncEngine, *, schema: str | None = None) -> None:
    """Upgrade to the newest revision unless the database is already there (one query)."""
    with _store_errors(engine):
        async with engine.connect() as conn:
            try:
                found = (await conn.exec_driver_sql(
                    "SELECT version_num FROM alembic_version")).scalars().all()
            except DBAPIError as exc:
                if isinstance(exc.orig, sqlite3.DatabaseError) and getattr(
                        exc.orig, "sqlite_errorname", None) in _UNUSABLE_FILE:
                    raise
                found = []  # no version table yet: a new database
    if found != [HEAD]:
        await upgrade(engine, schema=schema)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    with _store_errors(engine):
        async with engine.connect() as conn:
            return await conn.run_sync(_current)


async def check(engine: AsyncEngine) -> SchemaCheck:
    """Report the database's revision against the head and, on SQLite, its integrity."""
    quick_check: list[str] | None = None
    foreign_key_problems: int | None = None
    with _store_errors(engine):
        async with engine.connect() as conn:
            current = await conn.run_sync(_current)
            if conn.dialect.name == "sqlite":
                rows = (await conn.exec_driver_sql("PRAGMA quick_check")).all()
                quick_check = [str(row[0]) for row in rows]
                rows = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                foreign_key_problems = len(rows)
    return SchemaCheck(current, head_revision(), quick_check, foreign_key_problems)


def _current(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


async def _run_command(
    engine: AsyncEngine, fn: Callable[[Config, str], None], revision: str, schema: str | None
) -> None:
    def run(conn: Connection) -> None:
        fn(_config(conn), revision)

    with _store_errors(engine):
        async with _migration_transaction(engine, schema) as conn:
            await conn.run_sync(run)


@asynccontextmanager
async def _migration_transaction(engine: AsyncEngine, schema: str | None
                                 ) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that commits the migration DDL, or rolls all of it back.

    On PostgreSQL, DDL is transactional as it is; the transaction first takes
    :data:`MIGRATION_LOCK` and creates ``schema`` if it is missing.

    On SQLite: batch migrations rebuild a table (copy, drop, rename); with foreign keys on,
    dropping a parent table cascades deletes into its children. So foreign keys are off while
    migrating (the pragma is ignored inside a transaction, hence before BEGIN), checked before
    the commit, and restored afterwards. The explicit BEGIN makes the DDL transactional too:
    the sqlite3 module only opens transactions before DML.
    """
    async with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            async with conn.begin():
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": MIGRATION_LOCK})
                if schema is not None:
                    await _create_schema(conn, schema)
                yield conn
            return
        foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
        await conn.exec_driver_sql("PRAGMA foreign_keys = OFF")
        await conn.commit()
        try:
            async with conn.begin():
                await conn.exec_driver_sql("BEGIN")
                yield conn
                dangling = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                if dangling:
                    raise StoreError(
                        f"migration left {len(dangling)} rows with dangling foreign keys "
                        f"(first: {tuple(dangling[0])}); rolled back"
                    )
        finally:
            await conn.exec_driver_sql(f"PRAGMA foreign_keys = {int(foreign_keys)}")
            await conn.commit()


async def _create_schema(conn: AsyncConnection, schema: str) -> None:
    """Create the schema unless it exists (looked up first: ``CREATE SCHEMA IF NOT EXISTS``
    needs the CREATE privilege on the database even when the schema is already there)."""
    found = await conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :name"),
                               {"name": schema})
    if found.first() is None:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        await conn.exec_driver_sql(f"CREATE SCHEMA {quoted}")


@contextmanager
def _store_errors(engine: AsyncEngine) -> Iterator[None]:
    """Turn a file that is not a database, or a server that cannot be used, into a
    DatabaseUnavailable naming it (driver error kept)."""
    url = engine.url.render_as_string(hide_password=True)
    try:
        yield
    except (DBAPIError, sqlite3.DatabaseError, OSError) as exc:
        if engine.dialect.name == "postgresql" and (problem := server_problem(exc)):
            raise DatabaseUnavailable(url, problem) from exc
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if not isinstance(orig, sqlite3.DatabaseError):
            raise
        if getattr(orig, "sqlite_errorname", None) in _UNUSABLE_FILE:
            raise DatabaseUnavailable(url, f"not a usable SQLite database ({orig})") from exc
        raise
