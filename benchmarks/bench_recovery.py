"""Recovery: scan and decisions for 1,000 interrupted commands, and reattachment latency.

    .venv/bin/python benchmarks/bench_recovery.py [--quick] [--synchronous FULL] [--profile]

1. **Scan and decisions.** A database migrated by ``oneshot db upgrade``, then filled with raw
   ``sqlite3`` ``executemany``: ``--finished`` COMPLETED tasks (default 100,000; 10,000 with
   ``--quick``) with 10 transitions each, and ``--interrupted`` RUNNING commands (default 1,000)
   owned by a dead orchestrator (``<hostname>:<reaped pid>:x``), each with a process handle,
   two stored log fragments and a run directory whose shim and command pids are dead:

   * half *vanished*: ``started.json`` and an unlocked ``shim.lock``, no ``exit.json`` -> the
     spool's unstored tail is salvaged, then the default fallback ends it INTERRUPTED;
   * half *finished while down*: the same plus ``exit.json`` (code 0) -> reattached, the rest of
     the spool stored, COMPLETED.

   (A run directory that does not exist at all means "never started": recovery runs the command
   again, so it is not used here.) Each repetition recovers a fresh copy of the database and
   fresh run directories. Timed in-process from ``await orch.recover()`` to the last returned
   handle's outcome, with the store already open (open + migration check reported apart), and
   split into the scan (``find_orphans``), the decisions (the rest of ``recover()``) and settling
   (awaiting the reattached handles). Target: < 2 s. Missed (or ``--profile``): one more
   repetition under cProfile (main thread; the writer and aiosqlite threads show up as time
   waiting in ``epoll``), top entries printed.

2. **Reattachment latency.** ``oneshot run`` (a subprocess) runs a command printing a line every
   10 ms; once output is stored it is SIGKILLed; then ``oneshot recover`` starts, and the
   latency is from its start to the first log fragment newer than the last one stored before
   the kill (the database is polled with ``sqlite3`` every millisecond). The recoverer is then
   stopped with SIGTERM (the command ends INTERRUPTED). The timeline inside it comes from the
   database: the RECOVERING transition's time and the new fragment's ``at`` (when its first
   bytes were read from the spool). CLI start-up is measured apart (``python -c pass``,
   ``oneshot --help``). Target: median < 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    base_parser,
    load_summary,
    machine_summary,
    median,
    print_table,
    remove_db,
    scratch_dir,
    spread,
)
from sqlalchemy import select

import orchestrator.recovery as orch_recovery
from config import load_settings
from durable.persistence import PersistenceManager
from durable.schema import tasks
from orchestrator import AsyncOrchestrator
from orchestrator.shim import boot_id

RECOVER_TARGET = 2.0  # seconds, scan + decisions + outcomes
LATENCY_TARGET = 1.0  # seconds, recover start -> first new fragment stored
PROBE_READS = 100  # ids read per read path in the probe
ONESHOT = Path(sys.executable).with_name("oneshot")
LINES = [f"line {i:03d} of some command output\n".encode() for i in range(20)]
STORED_LINES = 10  # lines already stored (two fragments) when the orchestrator died
FINISHED_PATH = (  # (from, to, reason) of a finished task's 10 transitions
    (None, "CREATED", "submitted"), ("CREATED", "RUNNING", "starting"),
    ("RUNNING", "IDLE", "no output for 60s"), ("IDLE", "RUNNING", "output resumed"),
    ("RUNNING", "IDLE", "no output for 60s"), ("IDLE", "RUNNING", "output resumed"),
    ("RUNNING", "IDLE", "no output for 60s"), ("IDLE", "RUNNING", "output resumed"),
    ("RUNNING", "IDLE", "no output for 60s"), ("IDLE", "COMPLETED", "exit 0"),
)
TICKER = ("import time\nfor i in range(3000):\n"
          "    print('tick', i, time.time(), flush=True)\n    time.sleep(0.01)\n")


def cli_env() -> dict[str, str]:
    """The environment without ONESHOT_* variables: only the flags configure the subprocesses."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}


def oneshot(db: Path, *args: str) -> list[str]:
    return [str(ONESHOT), "--db", str(db), *args]


def upgrade(db: Path, cwd: Path) -> None:
    subprocess.run(oneshot(db, "db", "upgrade"), cwd=cwd, env=cli_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dead_pid() -> int:
    """A pid that existed a moment ago and is reaped: its owner id counts as gone."""
    child = subprocess.Popen(["true"])
    child.wait()
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, 0)
        raise RuntimeError(f"pid {child.pid} was reused at once")
    return child.pid


# -- part 1: building the database -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Orphan:
    id: str
    finished: bool  # exit.json present: finished while no orchestrator watched
    attempt_id: str


@dataclass(frozen=True, slots=True)
class Dataset:
    template: Path
    orphans: list[Orphan]
    pid: int
    build_seconds: float
    size_mb: float


def build_dataset(workdir: Path, finished: int, interrupted: int) -> Dataset:
    started = time.perf_counter()
    template = workdir / "template.db"
    upgrade(template, workdir)
    pid = dead_pid()
    host = socket.gethostname()
    now = time.time()
    conn = sqlite3.connect(template, isolation_level=None)
    for pragma in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = OFF",
                   "PRAGMA foreign_keys = OFF", "PRAGMA cache_size = -262144"):
        conn.execute(pragma)
    finished_ids = [uuid.uuid4().hex for _ in range(finished)]
    orphans = [Orphan(uuid.uuid4().hex, i % 2 == 1, uuid.uuid4().hex) for i in range(interrupted)]
    argv = json.dumps(["make", "-j8", "test"])
    task_sql = (
        "INSERT INTO tasks (id, name, kind, argv, cwd, queue, state, created_at, updated_at,"
        " started_at, finished_at, exit_code, attempt, owner, options)"
        " VALUES (?, ?, 'command', ?, '/srv/build', 'default', ?, ?, ?, ?, ?, ?, 1, ?, NULL)"
    )
    history_sql = ("INSERT INTO task_states (task_id, from_state, to_state, at, reason, worker,"
                   " attempt) VALUES (?, ?, ?, ?, ?, ?, 1)")
    conn.execute("BEGIN")

    def finished_rows() -> Iterator[tuple[Any, ...]]:
        for i, task_id in enumerate(finished_ids):
            at = now - 30 * 86400 + i * 20.0
            yield (task_id, f"job-{i}", argv, "COMPLETED", at, at + 9, at + 1, at + 9, 0,
                   f"{host}:{10_000 + i % 97}:{i % 4096:06x}")

    def finished_history() -> Iterator[tuple[Any, ...]]:
        for i, task_id in enumerate(finished_ids):
            at = now - 30 * 86400 + i * 20.0
            worker = f"{host}:{10_000 + i % 97}:{i % 4096:06x}"
            for step, (from_state, to_state, reason) in enumerate(FINISHED_PATH):
                yield task_id, from_state, to_state, at + step, reason, worker

    conn.executemany(task_sql, finished_rows())
    conn.executemany(history_sql, finished_history())
    owner = f"{host}:{pid}:x"
    spool = rep_db(workdir).with_name(rep_db(workdir).name + "-runs")
    stored = b"".join(LINES[:STORED_LINES])
    half = len(b"".join(LINES[:STORED_LINES // 2]))
    conn.executemany(task_sql, [
        (o.id, f"orphan-{i}", argv, "RUNNING", now - 60 - i * 0.01, now - 50, now - 50, None,
         None, owner) for i, o in enumerate(orphans)])
    conn.executemany(history_sql, [
        row for o in orphans for row in (
            (o.id, None, "CREATED", now - 60, "submitted", owner),
            (o.id, "CREATED", "RUNNING", now - 50, "starting", owner))])
    conn.executemany(
        "INSERT INTO process_handles (task_id, attempt, run_dir, host, boot_id, shim_pid,"
        " shim_start, pid, pid_start, pgid, stdout_offset, stderr_offset)"
        " VALUES (?, 1, ?, ?, ?, ?, 1, ?, 1, ?, ?, 0)",
        [(o.id, str(spool / o.id / "1"), host, boot_id(), pid, pid, pid, len(stored))
         for o in orphans])
    conn.executemany(
        "INSERT INTO log_fragments (task_id, seq, stream, at, data) VALUES (?, ?, 1, ?, ?)",
        [row for o in orphans for row in (
            (o.id, 0, now - 49, stored[:half]), (o.id, 1, now - 48, stored[half:]))])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = template.stat().st_size / 1e6
    return Dataset(template, orphans, pid, time.perf_counter() - started, size)


def rep_db(workdir: Path) -> Path:
    return workdir / "recover.db"


def prepare_rep(workdir: Path, data: Dataset) -> Path:
    """A fresh copy of the database, and fresh run directories for every orphan."""
    db = rep_db(workdir)
    remove_db(db)
    shutil.copyfile(data.template, db)
    spool = db.with_name(db.name + "-runs")
    shutil.rmtree(spool, ignore_errors=True)
    boot, pidns = boot_id(), os.readlink("/proc/self/ns/pid")
    spool_bytes = b"".join(LINES)
    for orphan in data.orphans:
        run_dir = spool / orphan.id / "1"
        run_dir.mkdir(parents=True, mode=0o700)
        started = {"schema": 1, "attempt_id": orphan.attempt_id, "boot_id": boot,
                   "pidns": pidns, "shim_pid": data.pid, "shim_start": 1, "pid": data.pid,
                   "pid_start": 1, "pgid": data.pid, "started_at": time.time() - 50}
        (run_dir / "spec.json").write_text(json.dumps(
            {"schema": 1, "attempt_id": orphan.attempt_id, "argv": ["make", "-j8", "test"]}))
        (run_dir / "started.json").write_text(json.dumps(started))
        (run_dir / "shim.lock").touch()
        (run_dir / "stdout.log").write_bytes(spool_bytes)
        (run_dir / "stderr.log").touch()
        if orphan.finished:
            (run_dir / "exit.json").write_text(json.dumps(
                {"schema": 1, "attempt_id": orphan.attempt_id, "exit_code": 0, "reason": None,
                 "error": None, "finished_at": time.time() - 5}))
    return db


# -- part 1: recovering --------------------------------------------------------------------


@dataclass
class Counter:
    count: int = 0
    seconds: float = 0.0  # awaited by the caller (concurrent awaits overlap)

    def add(self, began: float) -> None:
        self.count += 1
        self.seconds += time.perf_counter() - began

    def __str__(self) -> str:
        each = self.seconds / self.count * 1000 if self.count else 0.0
        return f"{self.count:,} in {self.seconds:.3f}s ({each:.2f} ms each)"


@dataclass
class RecoverRun:
    open_time: float = 0.0
    scan: float = 0.0
    decisions: float = 0.0
    settle: float = 0.0
    handles: int = 0
    reads: dict[str, Counter] = field(default_factory=lambda: {
        "scan": Counter(), "decisions": Counter()})
    writes: dict[str, Counter] = field(default_factory=lambda: {
        "scan": Counter(), "decisions": Counter()})
    commits: int = 0
    operations: int = 0
    states: dict[str, int] = field(default_factory=dict)
    fragments: int = 0
    probe: list[list[str]] = field(default_factory=list)
    profile: cProfile.Profile | None = None

    @property
    def total(self) -> float:
        return self.scan + self.decisions + self.settle


async def recover_once(db: Path, synchronous: str, *, profile: bool = False,
                       probe_ids: list[str] | None = None) -> RecoverRun:
    """Recover ``db`` once; count and time the store's reads and writes per phase."""
    run = RecoverRun()
    settings = load_settings(overrides={"database.url": str(db),
                                        "database.synchronous": synchronous})
    opened = time.perf_counter()
    scanned: list[float] = []
    find_orphans = orch_recovery.find_orphans

    async def timed_find_orphans(*args: Any) -> Any:
        result = await find_orphans(*args)
        scanned.append(time.perf_counter())
        return result

    async with AsyncOrchestrator(settings) as orch:
        store = orch.store
        assert isinstance(store, PersistenceManager)
        fetch, submit = store._fetch, store.writer.submit

        async def counted_fetch(statement: Any) -> Any:
            began = time.perf_counter()
            try:
                return await fetch(statement)
            finally:
                run.reads["decisions" if scanned else "scan"].add(began)

        async def counted_submit(op: Any) -> Any:
            began = time.perf_counter()
            try:
                return await submit(op)
            finally:
                run.writes["decisions" if scanned else "scan"].add(began)

        store._fetch = counted_fetch  # type: ignore[method-assign]
        store.writer.submit = counted_submit  # type: ignore[method-assign]
        orch_recovery.find_orphans = timed_find_orphans  # type: ignore[assignment]
        commits, operations = store.writer.commits, store.writer.operations
        profiler = cProfile.Profile() if profile else None
        try:
            start = time.perf_counter()
            run.open_time = start - opened
            if profiler is not None:
                profiler.enable()
            handles = await orch.recover()
            returned = time.perf_counter()
            for handle in handles:
                await handle.outcome()
            done = time.perf_counter()
            if profiler is not None:
                profiler.disable()
        finally:
            orch_recovery.find_orphans = find_orphans  # type: ignore[assignment]
            store._fetch = fetch  # type: ignore[method-assign]
            store.writer.submit = submit  # type: ignore[method-assign]
        run.scan, run.decisions = scanned[0] - start, returned - scanned[0]
        run.settle, run.handles, run.profile = done - returned, len(handles), profiler
        run.commits = store.writer.commits - commits
        run.operations = store.writer.operations - operations
        if probe_ids:
            run.probe = await probe_reads(store, db, probe_ids)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        run.states = dict(conn.execute(
            "SELECT state, count(*) FROM tasks WHERE name LIKE 'orphan-%' GROUP BY state"))
        run.fragments = conn.execute("SELECT count(*) FROM log_fragments").fetchone()[0]
    return run


async def probe_reads(store: PersistenceManager, db: Path, ids: list[str]) -> list[list[str]]:
    """Milliseconds per read: what the scan does, and cheaper ways to read the same rows."""

    async def timed(label: str, read: Any) -> list[str]:
        began = time.perf_counter()
        for task_id in ids:
            await read(task_id)
        return [label, f"{(time.perf_counter() - began) / len(ids) * 1000:.3f}"]

    rows = [
        await timed("store.get_task(id) (tasks.id LIKE ? || '%' ESCAPE, as the scan does)",
                    store.get_task),
        await timed("store engine, select(tasks).where(tasks.c.id == id)",
                    lambda task_id: store._fetch(select(tasks).where(tasks.c.id == task_id))),
        await timed("store.get_process(id) (primary key)", store.get_process),
        await timed("store.read_logs(id, tail=1) (primary key)",
                    lambda task_id: store.read_logs(task_id, tail=1)),
    ]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        for label, sql in (
            ("raw sqlite3, id LIKE ? || '%' ESCAPE '/'",
             "SELECT * FROM tasks WHERE id LIKE ? || '%' ESCAPE '/' LIMIT 2"),
            ("raw sqlite3, id = ?", "SELECT * FROM tasks WHERE id = ?"),
        ):
            began = time.perf_counter()
            for task_id in ids:
                conn.execute(sql, (task_id,)).fetchall()
            rows.append([label, f"{(time.perf_counter() - began) / len(ids) * 1000:.3f}"])
    began = time.perf_counter()
    await store.unfinished_tasks()
    rows.append(["store.unfinished_tasks() (once per scan)",
                 f"{(time.perf_counter() - began) * 1000:.3f}"])
    return rows


def profile_lines(profiler: cProfile.Profile, count: int) -> list[str]:
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    root = str(Path(__file__).resolve().parent.parent) + os.sep

    def name(key: tuple[str, int, str]) -> str:
        filename, line, function = key
        if filename == "~":
            return function
        short = filename.replace(root, "").replace(str(Path(sys.prefix)) + os.sep, "venv/")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        elif "/lib/python" in short:
            short = "stdlib/" + short.split("/lib/python", 1)[1].split("/", 1)[1]
        return f"{short}:{line}({function})"

    def table(title: str, index: int, only_ours: bool) -> list[str]:
        rows = sorted(entries.items(), key=lambda item: item[1][index], reverse=True)
        if only_ours:
            rows = [r for r in rows if r[0][0].startswith(root) and "benchmarks" not in r[0][0]]
        out = [title, f"  {'calls':>9} {'tottime':>8} {'cumtime':>8}  function"]
        for key, (_, calls, tottime, cumtime, _) in rows[:count]:
            out.append(f"  {calls:>9,} {tottime:>8.3f} {cumtime:>8.3f}  {name(key)}")
        return out

    total = sum(value[2] for value in entries.values())
    lines = [f"profile (main thread, {total:.2f} s of tottime under cProfile):"]
    lines += table("  by own time:", 2, only_ours=False)
    lines += table("  Oneshot code by cumulative time:", 3, only_ours=True)
    return lines


def bench_recover(args: Any, workdir: Path) -> tuple[list[str], list[str]]:
    finished = args.finished or (10_000 if args.quick else 100_000)
    reps = args.reps or (2 if args.quick else 3)
    data = build_dataset(workdir, finished, args.interrupted)
    with contextlib.closing(sqlite3.connect(data.template)) as conn:
        transitions = conn.execute("SELECT count(*) FROM task_states").fetchone()[0]
        tasks = conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
    vanished = sum(not o.finished for o in data.orphans)
    print(f"\n[1] recovery of {len(data.orphans):,} interrupted commands ({vanished:,} vanished, "
          f"{len(data.orphans) - vanished:,} finished while down) among {tasks:,} tasks and "
          f"{transitions:,} transitions; database {data.size_mb:.0f} MB built in "
          f"{data.build_seconds:.1f}s; {reps} repetitions", flush=True)
    probe_ids = [o.id for o in data.orphans[:PROBE_READS]]
    runs = []
    for rep in range(reps):
        db = prepare_rep(workdir, data)
        probe = probe_ids if rep == reps - 1 else None
        run = asyncio.run(recover_once(db, args.synchronous, probe_ids=probe))
        runs.append(run)
        print(f"  rep {rep + 1}/{reps}: total {run.total:.3f}s (scan {run.scan:.3f}s, decisions "
              f"{run.decisions:.3f}s, settle {run.settle:.3f}s); states {run.states}", flush=True)
    expected = {"INTERRUPTED": vanished, "COMPLETED": len(data.orphans) - vanished}
    for run in runs:
        if run.states != expected:
            raise RuntimeError(f"unexpected outcome {run.states}, expected {expected}")
    per_task = median([r.total for r in runs]) / len(data.orphans) * 1000
    print()
    print_table(["phase", "seconds median [min-max]", "share"], [
        [label, spread(values, "{:.3f}"), f"{median(values) / median([r.total for r in runs]):.0%}"]
        for label, values in (
            ("scan (find_orphans)", [r.scan for r in runs]),
            ("decisions (rest of recover())", [r.decisions for r in runs]),
            ("settle (await reattached handles)", [r.settle for r in runs]),
            ("total", [r.total for r in runs]),
        )
    ] + [["(not timed) open + migration check", spread([r.open_time for r in runs], "{:.3f}"),
          ""]])
    last = runs[-1]
    print(f"\nper task {per_task:.2f} ms. Last repetition: scan reads {last.reads['scan']}; "
          f"decision reads {last.reads['decisions']}; decision writes awaited "
          f"{last.writes['decisions']}; {last.commits:,} commits for {last.operations:,} write "
          f"operations; {last.handles:,} handles returned; {last.fragments:,} fragments after")
    if last.probe:
        print(f"\nread paths on the recovered database ({len(probe_ids)} ids, sequential):")
        print_table(["read", "ms per read"], last.probe)
    total = median([r.total for r in runs])
    met = total < RECOVER_TARGET
    verdicts = [f"recovery of {len(data.orphans):,} among {tasks:,} tasks: "
                f"{'MET' if met else 'MISSED'} (target < {RECOVER_TARGET:g} s, measured "
                f"{total:.3f} s = {total / RECOVER_TARGET:.2f}x the target)"]
    profile: list[str] = []
    if not met or args.profile:
        db = prepare_rep(workdir, data)
        profiled = asyncio.run(recover_once(db, args.synchronous, profile=True))
        assert profiled.profile is not None
        profile = [f"under cProfile: total {profiled.total:.3f}s (scan {profiled.scan:.3f}s, "
                   f"decisions {profiled.decisions:.3f}s, settle {profiled.settle:.3f}s)"]
        profile += profile_lines(profiled.profile, args.top)
        print()
        print("\n".join(profile))
    remove_db(rep_db(workdir))
    remove_db(data.template)
    shutil.rmtree(rep_db(workdir).with_name(rep_db(workdir).name + "-runs"), ignore_errors=True)
    return verdicts, profile


# -- part 2: reattachment latency ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reattach:
    latency: float  # recover start -> new fragment seen committed
    takeover: float  # recover start -> RECOVERING transition committed
    read: float  # recover start -> the new fragment's first bytes read from the spool
    backlog: int  # bytes in the new fragment (output written while nobody watched)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.001) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def reattach_once(db: Path, workdir: Path) -> Reattach:
    env = cli_env()
    created = time.time()
    runner = subprocess.Popen(oneshot(db, "run", "--", sys.executable, "-c", TICKER),
                              cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    recoverer: subprocess.Popen[bytes] | None = None
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        def stored_task() -> str | None:
            row = conn.execute(
                "SELECT t.id FROM tasks t WHERE t.created_at >= ? AND (SELECT count(*) FROM"
                " log_fragments f WHERE f.task_id = t.id) >= 2", (created,)).fetchone()
            return row[0] if row else None

        task_id = wait_for(stored_task, 20, "the command's output to be stored", 0.01)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        last_seq = conn.execute("SELECT max(seq) FROM log_fragments WHERE task_id = ?",
                                (task_id,)).fetchone()[0]
        start_wall, start = time.time(), time.perf_counter()
        recoverer = subprocess.Popen(oneshot(db, "recover"), cwd=workdir, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def new_fragment() -> tuple[float, int] | None:
            row = conn.execute("SELECT at, length(data) FROM log_fragments WHERE task_id = ?"
                               " AND seq > ? ORDER BY seq LIMIT 1", (task_id, last_seq)).fetchone()
            return (row[0], row[1]) if row else None

        at, size = wait_for(new_fragment, 30, "a new fragment after recover")
        latency = time.perf_counter() - start
        takeover = conn.execute(
            "SELECT at FROM task_states WHERE task_id = ? AND to_state = 'RECOVERING'",
            (task_id,)).fetchone()[0]
        return Reattach(latency, takeover - start_wall, at - start_wall, size)
    finally:
        conn.close()
        for process in (runner, recoverer):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def time_command(argv: list[str], reps: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=cli_env(), check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def bench_reattach(args: Any, workdir: Path) -> list[str]:
    reps = args.reps or (3 if args.quick else 5)
    db = workdir / "reattach.db"
    upgrade(db, workdir)
    print(f"\n[2] reattachment latency: `oneshot run` of a command printing every 10 ms, "
          f"SIGKILLed, then `oneshot recover`; {reps} repetitions", flush=True)
    runs = []
    for rep in range(reps):
        run = reattach_once(db, workdir)
        runs.append(run)
        print(f"  rep {rep + 1}/{reps}: first new fragment stored after {run.latency:.3f}s "
              f"(RECOVERING at {run.takeover:.3f}s, spool read at {run.read:.3f}s, "
              f"{run.backlog:,} bytes)", flush=True)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY state"))
    python = time_command([sys.executable, "-c", "pass"], reps * 2, workdir)
    helps = time_command([str(ONESHOT), "--help"], reps * 2, workdir)
    latency = median([r.latency for r in runs])
    print()
    print_table(["step (from the start of `oneshot recover`)", "seconds median [min-max]"], [
        ["python -c pass (separate runs)", spread(python, "{:.3f}")],
        ["oneshot --help (separate runs)", spread(helps, "{:.3f}")],
        ["task taken over (RECOVERING committed)", spread([r.takeover for r in runs], "{:.3f}")],
        ["first bytes read from the spool", spread([r.read for r in runs], "{:.3f}")],
        ["first new fragment committed (seen)", spread([r.latency for r in runs], "{:.3f}")],
    ])
    print(f"\nstates of the benchmark's tasks afterwards: {states}")
    print(f"CLI start-up (oneshot --help) is {median(helps) / latency:.0%} of the latency; "
          f"read -> commit (log flush interval, 0.2 s default) "
          f"{median([r.latency - r.read for r in runs]):.3f}s")
    return [f"reattachment latency: {'MET' if latency < LATENCY_TARGET else 'MISSED'} (target "
            f"< {LATENCY_TARGET:g} s, median {latency:.3f} s = "
            f"{latency / LATENCY_TARGET:.2f}x the target)"]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=None,
                        help="finished tasks in the database (default 100,000; quick 10,000)")
    parser.add_argument("--interrupted", type=int, default=1000, help="tasks to recover")
    parser.add_argument("--profile", action="store_true", help="profile even if the target is met")
    parser.add_argument("--top", type=int, default=15, help="profile entries shown per table")
    parser.add_argument("--part", choices=("all", "recover", "reattach"), default="all")
    args = parser.parse_args()
    print(f"bench_recovery: synchronous={args.synchronous}; {machine_summary()}")
    verdicts: list[str] = []
    with scratch_dir("recovery") as workdir:
        if args.part in ("all", "recover"):
            verdicts += bench_recover(args, workdir)[0]
        if args.part in ("all", "reattach"):
            verdicts += bench_reattach(args, workdir)
    print()
    for line in verdicts:
        print(line)
    print(f"at the end: {load_summary()}")


if __name__ == "__main__":
    main()
