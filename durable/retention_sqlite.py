"""Retention on SQLite: chunks through the group-commit writer, space back by vacuum.

A chunk is a write operation for the store's :class:`~durable.writer.GroupCommitWriter`: it
runs in the writer's ``BEGIN IMMEDIATE`` transaction, so it holds the database's write lock
while it chooses what to delete, and no other process's chunk (or any write) runs alongside.

Deleted rows only free pages inside the file. With ``PRAGMA auto_vacuum = INCREMENTAL`` a prune
hands them back to the file system by ``PRAGMA incremental_vacuum`` steps through the writer;
a small database without it is converted by a full ``VACUUM`` (:func:`vacuum_file`), a larger
one waits for ``oneshot db vacuum``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from durable.engine import ConnectionOptions, connect_sqlite
from durable.exceptions import StoreError
from durable.retention_engine import SQLITE, Chunk, ChunkOp, Query, Space, connection_query
from durable.writer import GroupCommitWriter

if TYPE_CHECKING:
    from durable.persistence import PersistenceManager

T = TypeVar("T")

INCREMENTAL = 2  # PRAGMA auto_vacuum value
SMALL_DATABASE_BYTES = 32 * 1024 * 1024
"""A prune converts a database without incremental auto-vacuum by a full VACUUM up to this size
(a few hundred milliseconds at most); a larger one waits for ``oneshot db vacuum``."""
VACUUM_PAGES_PER_CHUNK = 1024  # about 80 ms of write lock each
CHUNK_PAUSE = 0.02
"""Seconds between prune chunks with the write lock free (SQLite's busy wait polls)."""


class SqliteRetention:
    """:class:`durable.retention_plan.RetentionEngine` for :class:`PersistenceManager`."""

    dialect = SQLITE
    pause = CHUNK_PAUSE

    def __init__(self, store: PersistenceManager) -> None:
        self.store = store
        # The writer runs any operation with an ``apply(cursor)``; ours are not in WriteOp.
        self.writer: GroupCommitWriter[Any] = store.writer

    async def chunk(self, op: ChunkOp) -> Chunk:
        result: Chunk = await self.writer.submit(_OnWriter(op))
        return result

    async def read(self, fn: Callable[[Query], T]) -> T:
        async with self.store.engine.connect() as conn:
            return await conn.run_sync(lambda c: fn(connection_query(c)))

    async def snapshot(self, fn: Callable[[Query], T]) -> T:
        async with self.store.engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN")  # the first read fixes the snapshot
            try:
                return await conn.run_sync(lambda c: fn(connection_query(c)))
            finally:
                await conn.rollback()

    async def release_space(self) -> Space:
        released, longest = 0, 0.0
        while True:
            started = time.perf_counter()
            mode, pages, left = await self.writer.submit(
                IncrementalVacuum(VACUUM_PAGES_PER_CHUNK))
            longest = max(longest, time.perf_counter() - started)
            released += pages
            if mode != INCREMENTAL or not left or not pages:
                break
        async with self.store.engine.connect() as conn:
            page_size = int((await conn.exec_driver_sql("PRAGMA page_size")).scalar_one())
            page_count = int((await conn.exec_driver_sql("PRAGMA page_count")).scalar_one())
        if mode == INCREMENTAL:
            return Space("incremental", released, page_size, longest)
        if page_count * page_size > SMALL_DATABASE_BYTES:
            return Space("needs vacuum", 0, page_size, longest)
        before, after = await anyio.to_thread.run_sync(vacuum_file, self.store.options)
        return Space("vacuumed", (before - after) // page_size, page_size, longest)


@dataclass(frozen=True, slots=True)
class _OnWriter:
    """A chunk as a write operation of the group-commit writer."""

    op: ChunkOp

    def apply(self, cur: sqlite3.Cursor) -> Chunk:
        def query(sql: str, params: Any) -> list[tuple[Any, ...]]:
            return cur.execute(sql, tuple(params)).fetchall()

        return self.op.run(query, SQLITE)


@dataclass(frozen=True, slots=True)
class IncrementalVacuum:
    pages: int

    def apply(self, cur: sqlite3.Cursor) -> tuple[int, int, int]:
        """(auto_vacuum mode, pages released, free pages left)."""
        mode = cur.execute("PRAGMA auto_vacuum").fetchone()[0]
        free = cur.execute("PRAGMA freelist_count").fetchone()[0]
        if mode != INCREMENTAL:
            return mode, 0, free
        for _ in range(min(free, self.pages)):
            # sqlite3 steps a statement without result columns once: one page per execute.
            cur.execute("PRAGMA incremental_vacuum")
        left = cur.execute("PRAGMA freelist_count").fetchone()[0]
        return mode, free - left, left


def vacuum_file(options: ConnectionOptions) -> tuple[int, int]:
    """Rewrite the file without free pages and with incremental auto-vacuum on: its size in
    bytes before and after.

    Runs on a connection of its own (VACUUM cannot run inside a transaction, and the store's
    writer always opens one), so no store needs to be open in this process; another process's
    writes wait, and it waits up to ``busy_timeout`` for theirs.
    """
    conn = connect_sqlite(options)
    try:
        before = _database_bytes(conn)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # VACUUM makes it take effect
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return before, _database_bytes(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"vacuum failed: {exc}") from exc
    finally:
        conn.close()


def _database_bytes(conn: sqlite3.Connection) -> int:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(conn.execute("PRAGMA page_count").fetchone()[0]) * int(page_size)
