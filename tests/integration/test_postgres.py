"""What only the PostgreSQL store promises (the Store contract itself runs in
test_store_contract.py): its own schema, migrations shared by workers starting together, clear
errors for a server that cannot be used, and the `oneshot db` commands on a server database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from durable import migrate
from durable.engine import LOCK_TIMEOUT_MS, ConnectionOptions
from durable.exceptions import DatabaseUnavailable, StoreError
from durable.postgres import PostgresStore
from durable.records import NewTask, TaskKind
from durable.states import TaskState
from tests.support import oneshot_script

if TYPE_CHECKING:
    from tests.conftest import PgSchema

pytestmark = pytest.mark.postgres

LOCK_TIMEOUT_SECONDS = LOCK_TIMEOUT_MS / 1000


async def admin(url: str, *statements: str) -> list[Any]:
    """Run statements outside any transaction (CREATE/DROP DATABASE); the last one's rows."""
    engine = create_async_engine(url, poolclass=NullPool)
    rows: list[Any] = []
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                result = await conn.execute(text(statement))
                rows = list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


def store_in(schema: PgSchema, **kwargs: Any) -> PostgresStore:
    return PostgresStore(ConnectionOptions(schema.url, schema=schema.name), **kwargs)


def test_opening_creates_the_schema_and_keeps_every_table_in_it(pg_schema: PgSchema) -> None:
    """A schema that does not exist yet is created; alembic_version and the tables live there."""
    asyncio.run(admin(pg_schema.url, f"DROP SCHEMA {pg_schema.name}"))

    async def body() -> set[str]:
        async with store_in(pg_schema) as store:
            assert await store.list_tasks() == []
        rows = await admin(pg_schema.url, "SELECT table_name FROM information_schema.tables "
                                          f"WHERE table_schema = '{pg_schema.name}'")
        return {row[0] for row in rows}

    tables = asyncio.run(body())
    assert {"alembic_version", "tasks", "task_states", "log_fragments", "step_checkpoints",
            "process_handles"} <= tables


def test_workers_opening_a_new_database_together_migrate_it_once(pg_schema: PgSchema) -> None:
    """Stores opened at the same moment on an empty schema all open; it is at head once."""

    async def body() -> list[Any]:
        stores = [store_in(pg_schema) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        for store in stores:
            await store.close()
        return await admin(pg_schema.url,
                           f"SELECT version_num FROM {pg_schema.name}.alembic_version")

    assert asyncio.run(body()) == [(migrate.HEAD,)]


def test_database_behind_without_auto_upgrade_is_refused(pg_schema: PgSchema) -> None:
    """With auto_upgrade off, an unmigrated schema is a StoreError asking for `db upgrade`."""
    with pytest.raises(StoreError) as caught:
        asyncio.run(store_in(pg_schema, auto_upgrade=False).open())
    assert "run `oneshot db upgrade`" in str(caught.value)


def test_unreachable_server_is_unavailable_naming_the_url_without_password() -> None:
    """Nothing listening: DatabaseUnavailable, one line, the URL with its password masked."""
    url = "postgresql+asyncpg://alice:hunter2@127.0.0.1:1/oneshot"
    with pytest.raises(DatabaseUnavailable) as caught:
        asyncio.run(PostgresStore(ConnectionOptions(url)).open())
    message = str(caught.value)
    assert message.startswith("database postgresql+asyncpg://alice:***@127.0.0.1:1/oneshot: "
                              "cannot connect")
    assert "hunter2" not in message and "\n" not in message


def test_unknown_database_is_unavailable(pg_url: str) -> None:
    """A server without that database: DatabaseUnavailable saying so."""
    url = make_url(pg_url).set(database="oneshot_no_such_database")
    with pytest.raises(DatabaseUnavailable) as caught:
        asyncio.run(PostgresStore(ConnectionOptions(url.render_as_string(False))).open())
    assert 'database "oneshot_no_such_database" does not exist' in str(caught.value)


@pytest.fixture
def fresh_database(pg_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards."""
    name = f"oneshot_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(pg_url, f"CREATE DATABASE {name}"))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(pg_url, f"DROP DATABASE {name} WITH (FORCE)"))


def oneshot(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    env["ONESHOT_DATABASE__URL"] = url
    return subprocess.run([oneshot_script(), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_a_connection_option_the_driver_does_not_take_is_one_line_with_secrets_masked(
        pg_url: str) -> None:
    """`?sslmode=` (libpq's, not asyncpg's) or a typo: every command says which option, in one
    line naming the URL, with ``?password=`` masked like the URL's own password."""
    url = f"{pg_url}?sslmode=require&password=hunter2"
    for command in (("ls",), ("db", "check"), ("db", "upgrade")):
        done = oneshot(*command, url=url)
        assert done.returncode == 1, done.stderr
        assert "unsupported connection option" in done.stderr and "sslmode" in done.stderr
        assert "hunter2" not in done.stderr and "password=***" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_db_upgrade_and_check_on_a_server_database(fresh_database: str) -> None:
    """`oneshot db check` reports a new database behind (exit 1); `db upgrade` migrates it;
    then the check passes."""
    behind = oneshot("db", "check", url=fresh_database)
    assert behind.returncode == 1, behind.stderr
    assert f"revision:     none (head {migrate.HEAD})" in behind.stdout
    upgraded = oneshot("db", "upgrade", url=fresh_database)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"is at revision {migrate.HEAD}" in upgraded.stderr
    checked = oneshot("db", "check", url=fresh_database)
    assert checked.returncode == 0, checked.stderr
    assert f"revision:     {migrate.HEAD} (head {migrate.HEAD})" in checked.stdout


def test_db_commands_on_an_unreachable_server_fail_in_one_line() -> None:
    """`db check` / `db upgrade` against nothing: exit 1, one line, no password, no trace."""
    url = "postgresql://alice:hunter2@127.0.0.1:1/oneshot"
    for command in ("check", "upgrade"):
        done = oneshot("db", command, url=url)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.startswith("oneshot: database postgresql+asyncpg://alice:***@"), (
            command, done.stderr)
        assert "cannot connect" in done.stderr
        assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_db_upgrade_and_check_work_in_the_configured_schema(pg_schema: PgSchema) -> None:
    """With ONESHOT_DATABASE__SCHEMA, `db check` and `db upgrade` act on that schema: the
    tables land there, not in the server's default schema."""
    asyncio.run(admin(pg_schema.url, f"DROP SCHEMA {pg_schema.name}"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
        env.update(ONESHOT_DATABASE__URL=pg_schema.url, ONESHOT_DATABASE__SCHEMA=pg_schema.name)
        return subprocess.run([oneshot_script(), *args], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    behind = run("db", "check")
    assert behind.returncode == 1 and "revision:     none" in behind.stdout, behind.stderr
    upgraded = run("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    checked = run("db", "check")
    assert checked.returncode == 0, checked.stderr
    assert f"revision:     {migrate.HEAD} (head {migrate.HEAD})" in checked.stdout
    rows = asyncio.run(admin(pg_schema.url, "SELECT count(*) FROM information_schema.tables "
                                            f"WHERE table_schema = '{pg_schema.name}' "
                                            "AND table_name = 'workers'"))
    assert rows == [(1,)]


def test_a_write_that_meets_a_lock_timeout_is_retried_until_it_commits(
        pg_schema: PgSchema, caplog: pytest.LogCaptureFixture) -> None:
    """Another session holds the task's row past the store's lock_timeout: the transition is
    rolled back by the server, run again, and commits once the row is free."""
    task = NewTask(id=uuid.uuid4().hex, kind=TaskKind.COMMAND, name="locked", argv=["true"],
                   cwd="/")

    async def hold_row(locked: asyncio.Event, seconds: float) -> None:
        engine = pg_schema.create_engine(poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"),
                                   {"id": task.id})
                locked.set()
                await asyncio.sleep(seconds)
        finally:
            await engine.dispose()

    async def body() -> None:
        async with store_in(pg_schema) as store:
            await store.create_task(task)
            locked = asyncio.Event()
            holder = asyncio.create_task(hold_row(locked, LOCK_TIMEOUT_SECONDS + 1))
            await locked.wait()
            await store.transition(task.id, TaskState.CREATED, TaskState.INTERRUPTED,
                                   reason="after the lock")
            await holder
            assert (await store.get_task(task.id)).state is TaskState.INTERRUPTED
            assert [row.to_state for row in await store.history(task.id)] == [
                TaskState.CREATED, TaskState.INTERRUPTED]

    with caplog.at_level(logging.WARNING, logger="durable.transient"):
        asyncio.run(body())
    assert any("lock timeout" in record.getMessage() for record in caplog.records), caplog.text


def test_reads_and_writes_on_a_connection_the_server_closed_are_run_again(
        pg_schema: PgSchema, caplog: pytest.LogCaptureFixture) -> None:
    """The server terminates the store's pooled connection (a restart, a failover, an idle
    timeout): the next read and write fail on it and are run again on a fresh one."""
    async def terminate_pooled_connection(store: PostgresStore) -> None:
        async with store.engine.connect() as conn:  # the one connection a sequential user pools
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await admin(pg_schema.url, f"SELECT pg_terminate_backend({int(pid)})")

    async def body() -> None:
        async with store_in(pg_schema) as store:
            first = NewTask(id=uuid.uuid4().hex, kind=TaskKind.COMMAND, argv=["true"], cwd="/")
            await store.create_task(first)
            await terminate_pooled_connection(store)
            assert [t.id for t in await store.list_tasks()] == [first.id]
            await terminate_pooled_connection(store)
            await store.transition(first.id, TaskState.CREATED, TaskState.INTERRUPTED)
            assert (await store.get_task(first.id)).state is TaskState.INTERRUPTED

    with caplog.at_level(logging.WARNING, logger="durable.transient"):
        asyncio.run(body())
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("database read failed") for m in messages), messages
    assert any(m.startswith("database write failed") for m in messages), messages
