"""The one place that opens database connections and sets every SQLite pragma.

Both the SQLAlchemy async engine (reads, migrations) and the raw writer connection are opened
here, so they agree on WAL, foreign keys, busy timeout and the synchronous level. On
PostgreSQL, every connection's ``search_path`` is set here to the configured schema.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from config.loader import masked_url
from config.settings import SCHEMA_NAME
from durable.exceptions import DatabaseUnavailable
from durable.private import make_private_dirs

if TYPE_CHECKING:
    from config.settings import DatabaseSettings

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How to reach the database; built from settings by the caller."""

    url: str
    synchronous: str = "FULL"
    busy_timeout_ms: int = 5000
    schema: str | None = None
    retry_seconds: float = 10.0
    """How long a read or write keeps retrying a transient failure (:mod:`durable.transient`)."""
    """PostgreSQL only: the schema every connection works in (its ``search_path``)."""

    def __post_init__(self) -> None:
        if self.schema is None:
            return
        if not SCHEMA_NAME.fullmatch(self.schema):
            raise ValueError(f"not a usable schema name: {self.schema!r}")
        if not self.is_postgresql:
            raise ValueError("a schema can only be set for a PostgreSQL database")

    @classmethod
    def from_settings(cls, database: DatabaseSettings) -> ConnectionOptions:
        return cls(url=database.url, synchronous=database.synchronous,
                   busy_timeout_ms=database.busy_timeout_ms, schema=database.schema_,
                   retry_seconds=database.retry_seconds)

    @property
    def sa_url(self) -> URL:
        return make_url(self.url)

    @property
    def display_url(self) -> str:
        """The URL with its password (and secret query parameters) masked, for messages."""
        return masked_url(self.url)

    @property
    def is_sqlite(self) -> bool:
        return self.sa_url.get_backend_name() == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.sa_url.get_backend_name() == "postgresql"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file, or None for a server database."""
        if not self.is_sqlite:
            return None
        database = self.sa_url.database
        if not database or database == ":memory:":
            raise DatabaseUnavailable(self.url, "an in-memory SQLite database cannot be shared")
        return Path(database)


_UNAVAILABLE_SQLSTATES = ("08", "28", "3D", "53300", "57P")
"""SQLSTATE prefixes meaning the server cannot be used: connection exception, invalid
authorization, no such database, too many connections, shutting down or starting up."""


def driver_message(exc: BaseException) -> str:
    """The first line of a driver error (of the DB-API error SQLAlchemy wraps), or its type."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__


_TRANSIENT_SQLSTATES = ("08", "53300", "57P", "40001", "40P01", "55P03", "57014")
"""Connection exception, too many connections, shutting down or starting up; serialization
failure, deadlock, lock timeout, statement timeout (the server rolled the transaction back):
the same transaction may well succeed if tried again. A refused login or a missing database
would not."""


def ended_idle_in_transaction(exc: BaseException) -> bool:
    """Whether the server ended the session because it sat idle inside its transaction
    (``idle_in_transaction_session_timeout``, SQLSTATE 25P03, perhaps behind the "connection
    closed" the driver reports): that transaction was rolled back, even if it failed at the
    commit that would have ended it."""
    error: BaseException | None = exc
    while error is not None:
        if str(getattr(error, "sqlstate", None) or "") == "25P03":
            return True
        error = error.__cause__
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether a failed transaction is worth trying again on a fresh connection."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or sqlstate.startswith(_TRANSIENT_SQLSTATES)


def server_problem(exc: BaseException) -> str | None:
    """Why a database server cannot be used, if ``exc`` says so (unreachable, refused the
    login, no such database, connection lost), as one line; None for any other error."""
    if isinstance(exc, OSError):  # refused, unknown host, timed out: before any protocol
        return f"cannot connect ({driver_message(exc)})"
    if not isinstance(exc, DBAPIError):
        return None
    message = driver_message(exc)
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    if exc.connection_invalidated:
        return f"connection lost ({message})"
    if sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
        return message
    return None


def sqlite_pragmas(options: ConnectionOptions) -> list[str]:
    """The pragmas every Oneshot SQLite connection runs with, in order."""
    if options.synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}")
    return [
        f"PRAGMA busy_timeout = {int(options.busy_timeout_ms)}",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {options.synchronous}",
        "PRAGMA foreign_keys = ON",
    ]


def apply_sqlite_pragmas(conn: Any, options: ConnectionOptions) -> None:
    """Run :func:`sqlite_pragmas` on a DB-API connection (sqlite3 or the aiosqlite adapter)."""
    cursor = conn.cursor()
    try:
        for pragma in sqlite_pragmas(options):
            cursor.execute(pragma)
            if "journal_mode" in pragma:
                mode = str(cursor.fetchone()[0]).lower()
                if mode != "wal":
                    raise DatabaseUnavailable(options.url, f"cannot switch to WAL ({mode})")
    finally:
        cursor.close()


def prepare_sqlite_file(options: ConnectionOptions) -> Path:
    """Make sure the database's directory exists and is writable; return the file path.

    New directories are created owner-only (0700): task output may hold secrets.
    """
    path = options.sqlite_path
    assert path is not None
    directory = path.parent if str(path.parent) else Path(".")
    try:
        make_private_dirs(directory)
    except OSError as exc:
        raise DatabaseUnavailable(options.url, f"cannot create directory {directory}: "
                                  f"{exc.strerror}") from exc
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatabaseUnavailable(options.url, f"{path} is not readable and writable")
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnavailable(options.url, f"directory {directory} is not writable")
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    return path


def connect_sqlite(options: ConnectionOptions) -> sqlite3.Connection:
    """A raw sqlite3 connection in autocommit mode (transactions are explicit)."""
    path = prepare_sqlite_file(options)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        apply_sqlite_pragmas(conn, options)
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnavailable(options.url, str(exc)) from exc
    return conn


IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000
"""Oneshot's transactions are a few statements long. A session idle inside one for this long
belongs to a worker that was paused (SIGSTOP) or cut off mid-transaction: the server ends it,
so the row locks it holds do not stall the workers taking its tasks over."""
LOCK_TIMEOUT_MS = 5_000
"""A worker paused in the middle of a statement keeps its row locks (its session is still
"active"); a takeover waiting on one gives up after this long and is tried again at the next
scan, instead of stalling every other takeover."""


def _server_connect_args(options: ConnectionOptions) -> dict[str, Any]:
    """Driver settings of a PostgreSQL connection: the configured schema (set at connect
    time, not per transaction, so migrations, ``alembic_version`` and every query see the
    same schema without naming it) and the idle-in-transaction timeout."""
    if not options.is_postgresql:
        return {}
    settings = {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
                "lock_timeout": str(LOCK_TIMEOUT_MS)}
    if options.schema is not None:
        settings["search_path"] = options.schema
    if options.sa_url.get_driver_name() == "asyncpg":
        return {"server_settings": settings}
    return {"options": " ".join(f"-c{name}={value}"  # psycopg: libpq's options
                                for name, value in settings.items())}


def create_engine(options: ConnectionOptions) -> AsyncEngine:
    """The SQLAlchemy async engine (aiosqlite or asyncpg) with Oneshot's connection setup."""
    kwargs: dict[str, Any] = {"connect_args": _server_connect_args(options)}
    if options.is_sqlite:
        prepare_sqlite_file(options)
        # aiosqlite runs each connection in its own thread; a small pool of readers is
        # plenty, and WAL lets them read while the writer commits.
        kwargs["pool_size"] = 4
        kwargs["max_overflow"] = 4
    engine = create_async_engine(options.url, **kwargs)
    if options.is_sqlite:

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # The aiosqlite adapter exposes a sync-looking cursor API; autocommit while
            # setting pragmas (journal_mode cannot change inside a transaction).
            saved = dbapi_conn.isolation_level
            dbapi_conn.isolation_level = None
            try:
                apply_sqlite_pragmas(dbapi_conn, options)
            finally:
                dbapi_conn.isolation_level = saved

    return engine


@contextlib.contextmanager
def unsupported_options_refused(options: ConnectionOptions) -> Iterator[None]:
    """A query parameter of the URL that the driver does not take (``?sslmode=`` for asyncpg,
    a typo) fails its first connect with a TypeError: say so in one line, naming the URL."""
    try:
        yield
    except TypeError as exc:
        raise DatabaseUnavailable(options.display_url,
                                  f"unsupported connection option ({exc})") from None


def create_null_pool_engine(options: ConnectionOptions) -> AsyncEngine:
    """An engine without pooling, for one-shot tools (migrations, checks)."""
    if options.is_sqlite:
        # An unusable path is reported as DatabaseUnavailable naming it, not a driver error.
        prepare_sqlite_file(options)
    return create_async_engine(options.url, poolclass=NullPool,
                               connect_args=_server_connect_args(options))
