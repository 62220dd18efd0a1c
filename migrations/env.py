"""Alembic environment for Oneshot (SQLite and PostgreSQL, async drivers).

Two ways in:

* From the code (:mod:`durable.migrate`): an open *sync* ``Connection`` (the one
  ``AsyncConnection.run_sync`` hands over) arrives in ``config.attributes["connection"]``; the
  migrations run on it, inside the caller's transaction, with the caller's engine and pragmas.
* From the ``alembic`` command: an engine is built from ``sqlalchemy.url`` (or ``-x url=...``)
  through :func:`durable.engine.create_engine`, so the pragmas are the same.

Logging is never configured here: the application owns it.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from durable.engine import ConnectionOptions, create_engine
from durable.schema import metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: autogenerate emits "move and copy" batch blocks.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def do_run_migrations(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database: set sqlalchemy.url in alembic.ini or pass -x url=...")
    return url


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(ConnectionOptions(_url()))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
