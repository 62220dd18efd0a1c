"""How retention's statements run on an engine: the dialects, the :data:`Query`, the interface.

Retention's SQL (:mod:`durable.retention_plan`) is written once, with ``?`` parameters, against
a :data:`Query` and a :class:`Dialect`; an engine (:mod:`durable.retention_sqlite`,
:mod:`durable.retention_postgres`) implements :class:`RetentionEngine` to run a chunk in one
write transaction, run reads, and give space back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy.engine import Connection

from durable.states import TERMINAL_STATES

T = TypeVar("T")

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one SQL statement with ``?`` parameters and returns its rows (a write or read side)."""

Position = tuple[Any, ...]
"""Where a fragment stands in the oldest-first order: ``(at, *key)``."""


class Dialect:
    """The SQL retention uses, for one engine.

    ``hint`` is SQLite's unary plus, which keeps its planner off an index for a term that is
    only a filter (PostgreSQL plans by statistics and needs none). ``key`` names one fragment:
    SQLite's ``rowid`` (the ``at`` index holds it, so oldest-first needs no sort), PostgreSQL's
    primary key ``(task_id, seq)``.
    """

    def __init__(self, name: str, hint: str, key: tuple[str, ...], lowest: tuple[Any, ...]
                 ) -> None:
        self.name, self.key = name, key
        self.start: Position = (-math.inf, *lowest)
        """A position before every fragment (typed as the key's columns are)."""
        states = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_STATES))
        self.finished = f"t.state IN ({states})"
        self.finished_filter = hint + self.finished
        # Oldest finished first, by ix_tasks_finished_at (SQLite: the hints keep the planner
        # off the state index, which would sort every finished task for each chunk).
        self.aged = (f"{self.finished_filter} AND t.finished_at IS NOT NULL"
                     f" AND t.finished_at < ? AND {hint}t.created_at < ?")
        columns = ", ".join(f"f.{c}" for c in key)
        self.order = f"f.at, {columns}"
        position = ", ".join("?" for _ in range(1 + len(key)))
        self.after = f"({self.order}) > ({position})"
        self.through = f"({self.order}) <= ({position})"
        self.oldest_fragments = (
            f"SELECT {columns}, f.task_id, f.seq, f.at, length(f.data) FROM log_fragments AS f"
            f" CROSS JOIN tasks AS t WHERE t.id = f.task_id AND {self.finished}"
            " AND t.created_at < ?")

    def delete_fragments(self, keys: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """``DELETE`` of the fragments with these keys, and its parameters."""
        if len(self.key) == 1:
            where = f"{self.key[0]} IN ({marks(keys)})"
        else:
            row = "(" + ", ".join("?" for _ in self.key) + ")"
            where = f"({', '.join(self.key)}) IN ({', '.join(row for _ in keys)})"
        return f"DELETE FROM log_fragments WHERE {where}", [v for key in keys for v in key]


SQLITE = Dialect("sqlite", "+", ("rowid",), (-1,))
POSTGRES = Dialect("postgresql", "", ("task_id", "seq"), ("", -1))


@dataclass(frozen=True, slots=True)
class Space:
    """How an engine gave space back after a prune (see ``PruneReport.space``)."""

    kind: str
    pages_released: int = 0
    page_size: int = 0
    longest: float = 0.0
    """Seconds of the longest write it took (a vacuum step)."""


class ChunkOp(Protocol):
    def run(self, q: Query, d: Dialect) -> Chunk: ...


class RetentionEngine(Protocol):
    """What the prune loop needs from an engine."""

    dialect: Dialect
    pause: float
    """Seconds to leave between chunks, for other processes' writers."""

    async def chunk(self, op: ChunkOp) -> Chunk:
        """Run ``op`` in one write transaction, no other prune chunk alongside; commit."""

    async def read(self, fn: Callable[[Query], T]) -> T:
        """``fn`` on a read connection (committed rows)."""

    async def snapshot(self, fn: Callable[[Query], T]) -> T:
        """``fn`` on one consistent read snapshot; nothing is written."""

    async def release_space(self) -> Space:
        """Give the space of deleted rows back, as far as this engine does."""


@dataclass(slots=True)
class Chunk:
    """What one chunk deleted, and where the rule stands."""

    tasks: int = 0
    fragments: int = 0
    bytes: int = 0
    touched: set[str] = field(default_factory=set)
    done: bool = True
    remaining: tuple[str, ...] = ()


# -- running statements ---------------------------------------------------------------------


def connection_query(conn: Connection) -> Query:
    """A :data:`Query` on a SQLAlchemy connection (``?`` becomes the driver's placeholder)."""
    style = conn.dialect.paramstyle

    def query(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        result = conn.exec_driver_sql(placeholders(sql, style), tuple(params))
        return [tuple(row) for row in result.all()] if result.returns_rows else []

    return query


def placeholders(sql: str, paramstyle: str) -> str:
    """``sql`` written with ``?`` in a driver's parameter style (retention's statements hold
    no ``?`` or ``%`` of their own)."""
    if paramstyle == "qmark":
        return sql
    if paramstyle == "numeric_dollar":
        pieces = sql.split("?")
        return pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], 1))
    if paramstyle in ("format", "pyformat"):
        return sql.replace("?", "%s")
    raise ValueError(f"unsupported parameter style {paramstyle!r}")


def marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)
