"""Retention on PostgreSQL: chunks under a per-schema advisory lock, space back by autovacuum.

Concurrency. Several workers (and ``oneshot prune``) may prune the same database at once. Every
chunk runs in one transaction of :meth:`PostgresStore._write` that first takes the transaction
advisory lock ``pg_advisory_xact_lock(RETENTION_LOCK, hashtext(current_schema()))``, held until
its commit. So prune chunks of every process run one at a time, as they do on SQLite (where the
write lock does this), and each chooses what to delete from the committed state *after* the
previous chunk's commit (READ COMMITTED: every statement takes a fresh snapshot). Two prunes
therefore never delete the same fragment twice or add the same bytes to
``tasks.log_dropped_bytes`` twice, and a task another prune already cut is found within its
limit; deleting whole tasks, the per-task cut and the total rule's position bound
(:func:`durable.retention_plan.total_cutoff`) all depend only on what is committed, so two
concurrent prunes end where one would. The lock was chosen over ``FOR UPDATE SKIP LOCKED`` on
the chosen rows because a skipping prune would end its rule early and report a different
outcome, and because the total rule's choice spans many tasks; chunks are short (at most
``chunk_rows`` rows), so the wait is one chunk at most. The lock takes two ``int4`` keys, so it
never collides with the migration lock, and prunes of Oneshot installations in other schemas of
the same database do not wait for each other. Ordinary writes (new tasks, output, transitions)
never take it and never wait for it.

Space. Deleted rows become dead tuples; autovacuum (on by default) marks their space reusable,
and new rows fill it. The files are not shrunk: that needs ``VACUUM FULL``, which rewrites each
table under an exclusive lock, so Oneshot never runs it. ``oneshot db vacuum`` runs a plain
``VACUUM (ANALYZE)`` on Oneshot's tables at once (:func:`vacuum_tables`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import anyio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from durable.engine import (
    ConnectionOptions,
    create_null_pool_engine,
    driver_message,
    server_problem,
)
from durable.exceptions import DatabaseUnavailable, StoreError
from durable.retention_engine import POSTGRES, Chunk, ChunkOp, Query, Space, connection_query
from durable.schema import metadata

if TYPE_CHECKING:
    from durable.postgres import PostgresStore

T = TypeVar("T")

RETENTION_LOCK = int.from_bytes(b"ones", "big")
"""First key of the retention advisory lock (the second: the schema's name, hashed)."""
TABLES = tuple(sorted(metadata.tables))
"""Oneshot's tables, the ones ``oneshot db vacuum`` vacuums."""


class PostgresRetention:
    """:class:`durable.retention_plan.RetentionEngine` for :class:`PostgresStore`."""

    dialect = POSTGRES
    pause = 0.0  # waiters queue on the lock; nobody polls for it

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def chunk(self, op: ChunkOp) -> Chunk:
        return await self.store._write(_locked_chunk, op)

    async def read(self, fn: Callable[[Query], T]) -> T:
        # Shielded like every query of the store (see SqlReads._fetch).
        with anyio.CancelScope(shield=True), self.store._driver_errors():
            async with self.store.engine.connect() as conn:
                found = await conn.run_sync(lambda c: fn(connection_query(c)))
        return found

    async def snapshot(self, fn: Callable[[Query], T]) -> T:
        with anyio.CancelScope(shield=True), self.store._driver_errors():
            async with self.store.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="REPEATABLE READ",
                                                    postgresql_readonly=True)
                async with conn.begin():
                    found = await conn.run_sync(lambda c: fn(connection_query(c)))
        return found

    async def release_space(self) -> Space:
        return Space("autovacuum")


async def _locked_chunk(conn: AsyncConnection, op: ChunkOp) -> Chunk:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(current_schema()))"),
                       {"key": RETENTION_LOCK})
    return await conn.run_sync(lambda c: op.run(connection_query(c), POSTGRES))


_FOUND = text(
    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class AS c"
    " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(:names)"
    " ORDER BY c.relname")


async def vacuum_tables(options: ConnectionOptions) -> tuple[int, int]:
    """``VACUUM (ANALYZE)`` Oneshot's tables (in the configured schema): their size on disk
    in bytes (indexes and TOAST included) before and after.

    Outside a transaction (VACUUM cannot run in one), on a connection of its own. A plain
    VACUUM takes no lock that blocks reads or writes; it makes the space of deleted rows
    reusable and refreshes the planner's statistics now instead of when autovacuum comes by,
    and gives back only empty pages at the end of a table.
    """
    engine = create_null_pool_engine(options)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            found = (await conn.execute(_FOUND, {"names": list(TABLES)})).all()
            if not found:
                where = "" if options.schema is None else f" (schema {options.schema})"
                raise StoreError(f"no Oneshot tables in {options.display_url}{where}: "
                                 "nothing to vacuum")
            await conn.exec_driver_sql(f"VACUUM (ANALYZE) {', '.join(r[0] for r in found)}")
            after = (await conn.execute(_FOUND, {"names": list(TABLES)})).all()
    except (OSError, DBAPIError) as exc:
        problem = server_problem(exc)
        if problem is not None:
            raise DatabaseUnavailable(options.display_url, problem) from exc
        raise StoreError(f"vacuum failed: {driver_message(exc)}") from exc
    finally:
        await engine.dispose()
    return sum(int(r[1]) for r in found), sum(int(r[1]) for r in after)
