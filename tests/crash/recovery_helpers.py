"""Shared helpers of the command crash tests: a database site, CLI processes, identities.

A site's database is a SQLite file, or a PostgreSQL schema (``tests.support.Database``): the
CLI processes get it through ``ONESHOT_DATABASE__URL`` / ``ONESHOT_DATABASE__SCHEMA``.

Every process a test starts gets ``ONESHOT_TEST_TOKEN=<uuid>`` in its environment; shims and
commands inherit it, so a scan of ``/proc/*/environ`` finds whatever a test leaves behind.
Processes are killed only through verified identities (pid and start time, via a pidfd).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
from sqlalchemy.engine import make_url

from config import load_settings
from durable.persistence import store_from_settings
from durable.records import (
    NewTask,
    ProcessHandle,
    Stream,
    TaskKind,
    TaskRecord,
    Transition,
)
from durable.states import TaskState
from durable.store import Store
from orchestrator.options import RunOptions
from orchestrator.orchestrator import new_task_id
from tests.support import Database, oneshot_script

TIMEOUT = 30.0
T = TypeVar("T")
_STORE_LOCK = threading.Lock()
TASK_ID = re.compile(rb"oneshot: task ([0-9a-f]{32})")

PATTERN_SCRIPT = r"""
import os, sys, time
side, code, count, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
with open("/proc/self/stat", "rb") as stat:
    start = int(stat.read().rpartition(b")")[2].split()[19])
with open(side, "a") as f:
    f.write(f"{os.getpid()} {os.getpgid(0)} {start}\n")
for i in range(count):
    sys.stdout.buffer.write(b"out %03d " % i + bytes(range(i % 5 * 50, i % 5 * 50 + 7)) + b"\n")
    sys.stdout.flush()
    if i % 3 == 0:
        sys.stderr.buffer.write(b"err %03d \xff\xfe\n" % i)
        sys.stderr.flush()
    time.sleep(pause)
sys.exit(code)
"""
"""A task printing a known byte pattern (binary bytes included) to both streams, recording
its pid, pgid and start time in a side file, then exiting with a chosen code."""


def pattern(count: int) -> tuple[bytes, bytes]:
    """The stdout and stderr bytes PATTERN_SCRIPT prints for ``count`` lines."""
    out = b"".join(b"out %03d " % i + bytes(range(i % 5 * 50, i % 5 * 50 + 7)) + b"\n"
                   for i in range(count))
    err = b"".join(b"err %03d \xff\xfe\n" % i for i in range(count) if i % 3 == 0)
    return out, err


def pattern_command(side: Path, code: int, count: int, pause: float) -> list[str]:
    return [sys.executable, "-c", PATTERN_SCRIPT, str(side), str(code), str(count), str(pause)]



def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# Identities ------------------------------------------------------------------------------

def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat; None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rpartition(b")")[2].split()[19])


def alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie), and is the process started at ``start`` if given."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    fields = stat.rpartition(b")")[2].split()
    if fields[0] in (b"Z", b"X"):
        return False
    return start is None or int(fields[19]) == start


def kill_verified(pid: int, start: int | None, *, group: bool = False) -> bool:
    """SIGKILL ``pid`` (and its group) only if it is still the process started at ``start``."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if start is None or start_time(pid) != start:
            return False
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def processes_with_token(token: str) -> list[int]:
    """Live pids whose environment holds ONESHOT_TEST_TOKEN=token."""
    needle = f"ONESHOT_TEST_TOKEN={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def reap_token(token: str, settle: float = 3.0) -> list[int]:
    """Wait up to ``settle`` s for the token's processes to end; SIGKILL and return any left."""
    deadline = time.monotonic() + settle
    while (left := processes_with_token(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        kill_verified(pid, start_time(pid))
    return left


# A database and the CLI processes working on it ----------------------------------------

@dataclass(frozen=True)
class Run:
    """An ``oneshot run`` process and where its stderr goes."""

    proc: subprocess.Popen[bytes]
    stderr: Path


class Site:
    """One database (by default a SQLite file in ``root``) and every CLI process started on
    it; commands run in ``root``."""

    def __init__(self, root: Path, token: str | None = None,
                 database: Database | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = database or Database("sqlite", f"sqlite+aiosqlite:///{root / 'oneshot.db'}")
        self.db = self.database.sqlite_path
        # Where the shims spool: beside a SQLite file (the default), else set for the site.
        self.spool = root / "spool" if self.db is None else self.db.with_name(
            self.db.name + "-runs")
        self.token = token or uuid.uuid4().hex
        self.procs: list[subprocess.Popen[bytes]] = []
        self.with_store(lambda store: store.history("0" * 32))  # migrate before children race

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
        env.update(self.database.env(), ONESHOT_TEST_TOKEN=self.token)
        if self.db is None:
            env["ONESHOT_SPOOL_DIR"] = str(self.spool)
        env.update(extra)
        return env

    def start_run(self, command: list[str], *options: str, **extra_env: str) -> Run:
        """Start ``oneshot run [options] -- command`` (output discarded, stderr to a file)."""
        stderr = self.root / f"run-{uuid.uuid4().hex[:8]}.err"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen([oneshot_script(), "run", *options, "--", *command],
                                    cwd=self.root, env=self.env(**extra_env),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
        self.procs.append(proc)
        return Run(proc, stderr)

    def start_cli(self, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([oneshot_script(), *args], cwd=self.root,
                                env=self.env(**extra_env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = TIMEOUT, **extra_env: str
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([oneshot_script(), *args], cwd=self.root,
                              env=self.env(**extra_env), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout, check=False)

    def recover(self, **extra_env: str) -> subprocess.CompletedProcess[bytes]:
        done = self.cli("recover", **extra_env)
        assert done.returncode == 0, (done.returncode, done.stderr.decode(errors="replace"))
        assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        return done

    def logs(self, task_id: str, stream: str) -> bytes:
        done = self.cli("logs", task_id, "--raw", "--stream", stream)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def task_id(self, run: Run) -> str:
        """The id `oneshot run` printed on stderr."""
        def printed() -> str | None:
            match = TASK_ID.search(run.stderr.read_bytes())
            return match.group(1).decode() if match else None
        return str(wait_for(printed, "the task id"))

    # Raw SQL (``?`` placeholders): cheap enough to poll, and it works on rows too corrupt
    # for the store.
    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.db is None:
            return anyio.run(_pg_query, self.database, sql, params)
        if not self.db.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.db, timeout=TIMEOUT)) as db:
            return db.execute(sql, params).fetchall()

    def execute(self, sql: str, *params: Any) -> None:
        if self.db is None:
            anyio.run(_pg_query, self.database, sql, params)
            return
        with contextlib.closing(sqlite3.connect(self.db, timeout=TIMEOUT)) as db, db:
            db.execute(sql, params)

    def state(self, task_id: str) -> str | None:
        rows = self.query("SELECT state FROM tasks WHERE id = ?", task_id)
        return rows[0][0] if rows else None

    def stored_offset(self, task_id: str, stream: str = "stdout") -> int:
        """How far the task's ``stdout.log`` (or ``stderr.log``) is stored (0: no handle)."""
        column = {"stdout": "stdout_offset", "stderr": "stderr_offset"}[stream]
        rows = self.query(f"SELECT {column} FROM process_handles WHERE task_id = ?", task_id)
        return int(rows[0][0]) if rows else 0

    def handle_row(self, task_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT run_dir, attempt FROM process_handles WHERE task_id = ?",
                          task_id)
        return {"run_dir": rows[0][0], "attempt": rows[0][1]} if rows else None

    def running_with_handle(self, task_id: str, attempt: int = 1) -> bool:
        handle = self.handle_row(task_id)
        return (self.state(task_id) == "RUNNING" and handle is not None
                and handle["attempt"] == attempt)

    def run_dir(self, task_id: str) -> Path:
        """The spool directory of the task's current shim, from its stored handle."""
        handle = self.handle_row(task_id)
        assert handle is not None, f"task {task_id} has no process handle"
        return Path(handle["run_dir"])

    def started(self, task_id: str) -> dict[str, Any]:
        """The ``started.json`` of the task's current shim."""
        data: dict[str, Any] = json.loads((self.run_dir(task_id) / "started.json").read_text())
        return data

    # Typed reads through the store, for the assertions.
    def with_store(self, use: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``use`` on the opened store, in this thread (one thread at a time: opening
        migrates, and alembic's context is process-global)."""
        async def run() -> T:
            store = store_from_settings(load_settings(overrides=self.database.overrides()))
            await store.open()
            try:
                return await use(store)
            finally:
                await store.close()
        with _STORE_LOCK:
            return anyio.run(run)

    def read_task(self, task_id: str) -> tuple[TaskRecord, list[Transition]]:
        async def read(store: Store) -> tuple[TaskRecord, list[Transition]]:
            return await store.get_task(task_id), await store.history(task_id)
        return self.with_store(read)

    def read_handle(self, task_id: str) -> ProcessHandle | None:
        return self.with_store(lambda store: store.get_process(task_id))

    # Crashes.
    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a process we started, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)

    def orphan_runs(self, commands: dict[str, tuple[list[str], list[str]]],
                    **extra_env: str) -> dict[str, str]:
        """One `oneshot run [options] -- command` per entry (name -> (command, options)), all
        at once, each SIGKILLed once its command runs; returns name -> task id."""
        runs = {name: self.start_run(command, *options, **extra_env)
                for name, (command, options) in commands.items()}
        ids = {name: self.task_id(run) for name, run in runs.items()}
        for name, run in runs.items():
            wait_for(lambda i=ids[name]: self.running_with_handle(i), f"{name} to run")
            self.kill(run.proc)
        return ids

    def orphan_all(self, commands: dict[str, tuple[list[str], RunOptions]],
                   **extra_env: str) -> dict[str, str]:
        """Queue one task per entry (name -> (command, options)), let one `oneshot worker` start
        them all, and SIGKILL it once every command runs; returns name -> task id."""
        ids = self.queue(commands)
        worker = self.start_cli("worker", ONESHOT_CONCURRENCY=str(len(ids) + 1), **extra_env)
        for name, task_id in ids.items():
            wait_for(lambda i=task_id: self.running_with_handle(i), f"{name} to run")
        self.kill(worker)
        return ids

    def queue(self, commands: dict[str, tuple[list[str], RunOptions]]) -> dict[str, str]:
        """Queue command tasks for a worker, as `oneshot run --detach` does."""
        async def queue(store: Store) -> dict[str, str]:
            ids = {}
            for name, (argv, options) in commands.items():
                task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=name, argv=argv,
                               cwd=str(self.root), options=options.to_json())
                ids[name] = (await store.create_task(task, reason="queued")).id
            return ids
        return self.with_store(queue)

    def stored_logs(self, task_id: str) -> tuple[bytes, bytes]:
        """Every stored stdout and stderr byte of a task (read in-process: cheaper than the
        CLI where the CLI is not what a test is about)."""
        fragments = self.with_store(lambda store: store.read_logs(task_id))
        return (b"".join(f.data for f in fragments if f.stream is Stream.STDOUT),
                b"".join(f.data for f in fragments if f.stream is Stream.STDERR))

    def lose(self, task_id: str) -> dict[str, Any]:
        """Kill a task's shim, then its command, through their verified identities (the shim
        first: killed later, it would record the command's death as an exit)."""
        started = self.started(task_id)
        assert kill_verified(started["shim_pid"], started["shim_start"])
        wait_for(lambda: not alive(started["shim_pid"]), "the shim to die")
        assert kill_verified(started["pid"], started["pid_start"], group=True)
        wait_for(lambda: not alive(started["pid"]), "the command to die")
        return started

    def close(self) -> list[int]:
        """Kill and reap every process started here; returns the leaked pids it killed."""
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        return reap_token(self.token)


async def _pg_query(database: Database, sql: str, params: tuple[Any, ...]
                    ) -> list[tuple[Any, ...]]:
    """One statement on the site's PostgreSQL schema, autocommitted, on a fresh connection;
    the ``?`` placeholders become asyncpg's ``$n``."""
    numbers = iter(range(1, len(params) + 1))
    dsn = make_url(database.url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    assert database.schema is not None, "a test's PostgreSQL database has its own schema"
    conn = await asyncpg.connect(dsn, server_settings={"search_path": database.schema})
    try:
        rows = await conn.fetch(re.sub(r"\?", lambda _: f"${next(numbers)}", sql), *params)
        return [tuple(row) for row in rows]
    finally:
        await conn.close()


@contextlib.contextmanager
def site_at(root: Path, database: Database | None = None) -> Iterator[Site]:
    """A Site whose processes are all gone afterwards; fails the test if any leaked."""
    site = Site(root, database=database)
    try:
        yield site
    except BaseException:
        site.close()
        raise
    leaked = site.close()
    assert not leaked, f"processes left behind: {leaked}"


def terminal(state: str | None) -> bool:
    return state in {s.value for s in TaskState if s.is_terminal}
