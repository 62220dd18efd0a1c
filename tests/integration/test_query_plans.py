"""Every query behind `ls`, `show` and `logs` uses an index, never a full table scan.

The statements are the ones the store really sends: captured from the SQLAlchemy engine while
the store methods run, then explained with ``EXPLAIN QUERY PLAN`` on a raw connection.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import event

from durable.engine import ConnectionOptions
from durable.persistence import PersistenceManager
from durable.records import LogFragment, NewTask, Stream, TaskKind
from durable.states import TaskState

TASKS = 300


async def _fill(store: PersistenceManager) -> str:
    """Tasks in several states, each with history and output; returns one task's id."""
    task_id = ""
    for i in range(TASKS):
        task_id = uuid.uuid4().hex
        await store.create_task(NewTask(id=task_id, kind=TaskKind.COMMAND, name=f"job-{i}",
                                        argv=["true"]))
        if i % 3:
            await store.transition(task_id, TaskState.CREATED, TaskState.RUNNING)
        await store.append_logs([
            LogFragment(task_id, Stream.STDOUT if n % 2 else Stream.STDERR, n, time.time(),
                        b"line\n") for n in range(5)
        ])
    return task_id


def _plan_of(path: Path, sql: str, params: Any) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    finally:
        conn.close()
    return [str(row[-1]) for row in rows]


def _captured_plans(tmp_path: Path, query: Callable[[PersistenceManager, str],
                                                    Awaitable[object]]) -> list[str]:
    path = tmp_path / "plans.db"

    async def body() -> list[tuple[str, Any]]:
        store = PersistenceManager(ConnectionOptions(f"sqlite+aiosqlite:///{path}"))
        async with store:
            task_id = await _fill(store)
            seen: list[tuple[str, Any]] = []

            def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
                seen.append((statement, params))

            event.listen(store.engine.sync_engine, "before_cursor_execute", record)
            await query(store, task_id)
            event.remove(store.engine.sync_engine, "before_cursor_execute", record)
            return seen

    statements = anyio.run(body)
    assert statements, "the query sent no SQL"
    return [line for sql, params in statements for line in _plan_of(path, sql, params)]


QUERIES: dict[str, Callable[[PersistenceManager, str], Awaitable[object]]] = {
    "ls": lambda s, _: s.list_tasks(limit=50),
    "ls --state RUNNING": lambda s, _: s.list_tasks(states=[TaskState.RUNNING], limit=50),
    "ls --since": lambda s, _: s.list_tasks(since=time.time() - 60, limit=50),
    "ls: next page": lambda s, t: s.list_tasks(cursor=(time.time() - 1, t), limit=50),
    "ls --state RUNNING: next page": lambda s, t: s.list_tasks(
        states=[TaskState.RUNNING], cursor=(time.time() - 1, t), limit=50),
    "show (full id)": lambda s, t: s.get_task(t),
    "show (id prefix)": lambda s, t: s.get_task(t[:10]),
    "show: history": lambda s, t: s.history(t),
    "show: output size": lambda s, t: s.log_size(t),
    "show: steps": lambda s, t: s.load_steps(t),
    "logs --tail": lambda s, t: s.read_logs(t, tail=100),
    "logs --stream stderr --tail": lambda s, t: s.read_logs(t, streams=[Stream.STDERR], tail=10),
    "logs (pages)": lambda s, t: s.read_logs(t, after_seq=1, limit=32),
    "logs --since": lambda s, t: s.read_logs(t, after_seq=-1, limit=32, since=0.0),
    "logs: page before a seq": lambda s, t: s.read_logs(t, tail=32, before_seq=3),
    "recover: process handle": lambda s, t: s.get_process(t),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_uses_an_index(tmp_path: Path, name: str) -> None:
    """The plan searches an index (or walks one in order); it never scans a table bare."""
    plan = _captured_plans(tmp_path, QUERIES[name])
    bare_scans = [line for line in plan if line.startswith("SCAN") and "INDEX" not in line]
    assert not bare_scans, f"{name}: {plan}"
    assert any("INDEX" in line or "PRIMARY KEY" in line for line in plan), plan
