"""Run the alembic migrations shipped in the ``migrations`` package, from the code.

Everything runs on the caller's engine (same pool, same SQLite pragmas): the alembic command
gets the open connection through ``config.attributes["connection"]`` and never configures
logging. The ``Config`` is built here; no ``alembic.ini`` is read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import migrations
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
    "head_revision",
    "upgrade",
]

HEAD = "0003"
"""The newest revision in ``migrations/versions`` (a test keeps the two equal). Known without
importing alembic, so opening an up-to-date store costs one query, not alembic's start-up."""

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent

# sqlite3 error names meaning "this file cannot be used as a database at all".
_UNUSABLE_FILE = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


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


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the newest), in one transaction."""
    from alembic import command

    await _run_command(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"``: drop everything)."""
    from alembic import command

    await _run_command(engine, command.downgrade, revision)


async def ensure_head(engine: AsyncEngine) -> None:
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
        await upgrade(engine)


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
    engine: AsyncEngine, fn: Callable[[Config, str], None], revision: str
) -> None:
    def run(conn: Connection) -> None:
        fn(_config(conn), revision)

    with _store_errors(engine):
        async with _migration_transaction(engine) as conn:
            await conn.run_sync(run)


@asynccontextmanager
async def _migration_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that commits the migration DDL, or rolls all of it back.

    On SQLite: batch migrations rebuild a table (copy, drop, rename); with foreign keys on,
    dropping a parent table cascades deletes into its children. So foreign keys are off while
    migrating (the pragma is ignored inside a transaction, hence before BEGIN), checked before
    the commit, and restored afterwards. The explicit BEGIN makes the DDL transactional too:
    the sqlite3 module only opens transactions before DML.
    """
    async with engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            async with conn.begin():
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


@contextmanager
def _store_errors(engine: AsyncEngine) -> Iterator[None]:
    """Turn a file that is not a database into a StoreError naming it (driver error kept)."""
    try:
        yield
    except (DBAPIError, sqlite3.DatabaseError) as exc:
        orig = exc.orig if isinstance(exc, DBAPIError) else exc
        if not isinstance(orig, sqlite3.DatabaseError):
            raise
        if getattr(orig, "sqlite_errorname", None) in _UNUSABLE_FILE:
            url = engine.url.render_as_string(hide_password=True)
            raise DatabaseUnavailable(url, f"not a usable SQLite database ({orig})") from exc
        raise
