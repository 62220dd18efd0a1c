"""Workers sharing one database: throughput of 1, 2, 4 ``oneshot worker`` processes, and claim
latency on PostgreSQL.

    .venv/bin/python benchmarks/bench_workers.py [--quick] [--tasks 2000] [--workers 1,2,4]
        [--concurrency 8] [--pg-url URL] [--reps N] [--claim-tasks 2000] [--claimers 1,2,4]

1. **Throughput.** ``--tasks`` short commands (``true``) are queued in-process
   (``store.create_task``, unowned, queue ``default``), then ``--workers`` separate
   ``.venv/bin/oneshot worker`` processes (``ONESHOT_CONCURRENCY=--concurrency`` each) start on
   the same PostgreSQL database and run them. Each configuration gets a fresh schema
   (``oneshot_bench_<hex>``, dropped afterwards), its own ``XDG_DATA_HOME`` / ``XDG_CONFIG_HOME``
   (so the shim spools of a server database go under the scratch directory) and a clean
   environment (no ``ONESHOT_*`` variable of the caller). Timed from the first worker's spawn
   to the last terminal transition stored; a ``COUNT`` of terminal tasks polled every 50 ms
   sees the end, then the workers are stopped with SIGTERM (a run where no task ends for 60 s
   is abandoned and reported). Also from the stored rows: the span from the first task started
   (RUNNING) to the last one ended, which leaves out the workers' start-up. The same workload
   runs on a SQLite file (one worker) for comparison. One repetition by default (``--reps``);
   configurations rotate their order from one repetition to the next; a ratio is the median of
   per-repetition ratios against the 1-worker PostgreSQL run of the same repetition.

   Worker stdout/stderr go to files in the scratch directory; every line other than the
   worker's start, drain and stop lines is reported as a problem, as are exit codes other
   than 0 and tasks not COMPLETED.

   CPU: the machine's busy time over the run (``/proc/stat``, all processes: workers, shims,
   commands, the PostgreSQL server, and whatever else shares the machine) and the workers' own
   CPU (``/proc/<pid>/stat``, read just before SIGTERM), per task.

2. **Claim latency.** ``--claim-tasks`` tasks are queued in a fresh schema, then K claimer
   processes (``--claimers``; multiprocessing, spawn) each open a ``PostgresStore`` and, once
   all are connected, call ``store.claim(worker=..., queues=["default"], limit=1,
   lease_seconds=30)`` in a loop until the queue is empty, timing every call. Reported: p50 and
   p99 of the calls that returned a task (pooled over repetitions) and claims/s (all claims
   over the span from the common start to the last claimer's end; median over repetitions),
   three repetitions by default. ``--claims-on postgresql,sqlite`` adds the same on SQLite.

Not a test, never run in CI, asserts nothing on timings. Needs a PostgreSQL server (default:
the test server); without one, only the SQLite run is made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import load_summary, machine_summary, median, print_table, scratch_dir, spread
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from config import load_settings
from durable.persistence import PersistenceManager, store_from_settings
from durable.postgres import PostgresStore
from durable.records import NewTask, TaskKind
from durable.schema import tasks
from durable.states import TERMINAL_STATES, TaskState
from durable.store import Store
from orchestrator.orchestrator import new_task_id

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
ONESHOT = Path(sys.executable).with_name("oneshot")
TERMINAL = [state.value for state in TERMINAL_STATES]
POLL = 0.05  # seconds between COUNTs of terminal tasks
STALL_LIMIT = 60.0  # seconds without a task ending before a configuration is abandoned
STOP_LIMIT = 30.0  # seconds a SIGTERM'd worker gets to exit before SIGKILL
QUEUE_BATCH = 50  # tasks created concurrently while queueing
PORTED = ("claim", "heartbeat", "save_worker", "list_workers", "release_lease")
CLK_TCK = os.sysconf("SC_CLK_TCK")
EXPECTED_LINES = ("oneshot: worker ", "oneshot: SIGTERM: draining")  # any other is reported


# -- databases ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """The database of one configuration: a PostgreSQL schema or a SQLite file."""

    url: str
    schema: str | None = None

    @property
    def engine_name(self) -> str:
        return "postgresql" if self.schema is not None else "sqlite"

    def overrides(self) -> dict[str, Any]:
        return {"persistence.enabled": True, "database.url": self.url,
                "database.schema": self.schema}

    def env(self) -> dict[str, str]:
        env = {"ONESHOT_PERSISTENCE__ENABLED": "true", "ONESHOT_DATABASE__URL": self.url}
        if self.schema is not None:
            env["ONESHOT_DATABASE__SCHEMA"] = self.schema
        return env

    def store(self) -> Store:
        return store_from_settings(load_settings(overrides=self.overrides()))


async def pg_execute(url: str, *statements: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


def pg_problem(url: str) -> str | None:
    """Why PostgreSQL cannot be used here, or None."""
    try:
        asyncio.run(pg_execute(url, "SELECT 1"))
    except (OSError, DBAPIError) as exc:
        return f"PostgreSQL unreachable at {url}: {exc!r}"
    missing = [name for name in PORTED if not hasattr(PostgresStore, name)]
    if missing:
        return f"PostgresStore lacks {', '.join(missing)} (not ported yet)"
    return None


@contextlib.contextmanager
def pg_schema(url: str) -> Iterator[Target]:
    """A fresh schema, dropped with everything in it afterwards."""
    name = f"oneshot_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_execute(url, f'CREATE SCHEMA "{name}"'))
    try:
        yield Target(url, name)
    finally:
        asyncio.run(pg_execute(url, f'DROP SCHEMA "{name}" CASCADE'))


@contextlib.contextmanager
def database(kind: str, pg_url: str, workdir: Path) -> Iterator[Target]:
    if kind == "postgresql":
        with pg_schema(pg_url) as target:
            yield target
    else:
        yield Target(f"sqlite+aiosqlite:///{workdir / 'oneshot.db'}")


async def queue_tasks(store: Store, count: int, cwd: Path) -> None:
    """``count`` unowned ``true`` commands in queue ``default``, oldest first."""
    async def one() -> None:
        await store.create_task(NewTask(id=new_task_id(), kind=TaskKind.COMMAND, argv=["true"],
                                        cwd=str(cwd)), reason="queued")

    for start in range(0, count, QUEUE_BATCH):
        await asyncio.gather(*(one() for _ in range(min(QUEUE_BATCH, count - start))))


async def count_terminal(store: PersistenceManager | PostgresStore) -> int:
    async with store.engine.connect() as conn:
        found = await conn.scalar(select(func.count()).select_from(tasks)
                                  .where(tasks.c.state.in_(TERMINAL)))
    return int(found or 0)


async def stored_outcome(store: PersistenceManager | PostgresStore
                         ) -> tuple[dict[str, int], float | None, float | None]:
    """Tasks per state; the first start and the last terminal transition of the tasks that
    ended."""
    async with store.engine.connect() as conn:
        states = {row[0]: int(row[1]) for row in await conn.execute(
            select(tasks.c.state, func.count()).group_by(tasks.c.state))}
        first, last = (await conn.execute(
            select(func.min(tasks.c.started_at), func.max(tasks.c.updated_at))
            .where(tasks.c.state.in_(TERMINAL)))).one()
    return states, first, last


# -- CPU ------------------------------------------------------------------------------------


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine since boot (all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of one live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_cpu() -> dict[int, float]:
    """CPU seconds of every live PostgreSQL server process on this machine, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = process_cpu(int(entry.name))
    return found


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots (a process born since counts from zero; one that ended
    in between is missed)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# -- 1. throughput ---------------------------------------------------------------------------


@dataclass(slots=True)
class FleetRun:
    label: str
    workers: int
    tasks: int
    ended: int = 0  # tasks terminal at the end (all of them unless a run was abandoned)
    wall: float = 0.0  # spawn of the first worker -> last task terminal (stored time)
    span: float = 0.0  # first stored start -> last stored terminal transition
    startup: float = 0.0  # spawn -> first stored start
    busy_cores: float = 0.0  # machine busy CPU seconds / wall
    worker_cpu_ms: float = 0.0  # workers' own CPU per task
    server_cpu_ms: float = 0.0  # the local PostgreSQL server's CPU per task
    machine_cpu_ms: float = 0.0  # every process on the machine, per task
    states: dict[str, int] = field(default_factory=dict)
    claimed: list[int] = field(default_factory=list)  # per worker, from its stop line
    exit_codes: list[int | None] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ended / self.wall if self.wall else 0.0

    @property
    def span_rate(self) -> float:
        return self.ended / self.span if self.span else 0.0


def clean_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    env["XDG_DATA_HOME"] = str(workdir / "data")
    env["XDG_CONFIG_HOME"] = str(workdir / "config")
    env["COLUMNS"] = "1000"  # rich wraps the workers' stderr lines at 80 columns otherwise
    return env


def run_fleet(kind: str, workers: int, count: int, concurrency: int, pg_url: str,
              label: str) -> FleetRun:
    with scratch_dir("workers") as workdir, database(kind, pg_url, workdir) as target:
        cwd = workdir / "cwd"
        cwd.mkdir()
        env = {**clean_env(workdir), **target.env(), "ONESHOT_CONCURRENCY": str(concurrency)}
        return asyncio.run(_run_fleet(target, workers, count, env, workdir, label))


async def _run_fleet(target: Target, workers: int, count: int, env: dict[str, str],
                     workdir: Path, label: str) -> FleetRun:
    run = FleetRun(label, workers, count)
    store = target.store()
    assert isinstance(store, PersistenceManager | PostgresStore)
    await store.open()
    procs: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"worker-{i}.log" for i in range(workers)]
    try:
        await queue_tasks(store, count, workdir / "cwd")
        busy0, server0 = machine_cpu(), server_cpu()
        start = time.time()
        for log_path in logs:
            with log_path.open("wb") as log:
                procs.append(subprocess.Popen([str(ONESHOT), "worker"], env=env,
                                              cwd=workdir / "cwd", stdout=log, stderr=log))
        done, last_change, done_at = 0, time.monotonic(), 0.0
        while done < count:
            await asyncio.sleep(POLL)
            now_done = await count_terminal(store)
            if now_done != done:
                done, last_change = now_done, time.monotonic()
            if done >= count:
                done_at = time.time()
                break
            dead = [p for p in procs if p.poll() is not None]
            if dead or time.monotonic() - last_change > STALL_LIMIT:
                why = (f"{len(dead)} worker(s) exited early" if dead
                       else f"no task ended for {STALL_LIMIT:.0f} s")
                run.problems.append(f"abandoned at {done}/{count} terminal: {why}")
                done_at = time.time()
                break
        run.worker_cpu_ms = sum(process_cpu(p.pid) for p in procs) / count * 1000
        busy1, server1 = machine_cpu(), server_cpu()
        run.server_cpu_ms = cpu_since(server0, server1) / count * 1000
        run.wall = done_at - start  # until the poll saw the end; replaced by the stored end
        run.busy_cores = (busy1 - busy0) / max(run.wall, 1e-9)
        run.machine_cpu_ms = (busy1 - busy0) / count * 1000
    finally:
        await stop_workers(procs)
        run.exit_codes = [p.returncode for p in procs]
        with contextlib.suppress(Exception):
            run.states, first, last = await stored_outcome(store)
            run.ended = sum(n for state, n in run.states.items() if state in TERMINAL)
            if first is not None and last is not None:
                run.wall, run.span, run.startup = last - start, last - first, first - start
        await store.close()
    for i, log_path in enumerate(logs):
        unexpected = []
        for line in log_path.read_text(errors="replace").splitlines():
            if "oneshot: worker stopped after" in line:
                run.claimed.append(int(line.split("after")[1].split()[0]))
            elif line.strip() and not line.startswith(EXPECTED_LINES):
                unexpected.append(line.strip(" |")[:200])
        if len(unexpected) > 3:  # a traceback: its first line and its last (the exception)
            unexpected = [unexpected[0], f"... {len(unexpected) - 2} lines ...", unexpected[-1]]
        run.problems += [f"worker {i} log: {line}" for line in unexpected]
    if any(code != 0 for code in run.exit_codes):
        run.problems.append(f"exit codes {run.exit_codes}")
    unfinished = {s: n for s, n in run.states.items() if s != TaskState.COMPLETED.value}
    if unfinished:
        run.problems.append(f"tasks not COMPLETED: {unfinished}")
    return run


async def stop_workers(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_LIMIT
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- 2. claim latency -----------------------------------------------------------------------


def claimer(target: Target, name: str, ready: Any, go: Any, results: Any) -> None:
    """One claimer process: connect, report ready, wait for go, claim one task at a time
    until none is left; send back the latency of each claim that returned a task."""
    results.put(asyncio.run(_claimer(target, name, ready, go)))


async def _claimer(target: Target, name: str, ready: Any, go: Any
                   ) -> tuple[list[float], int, float, float, str | None]:
    store = target.store()
    latencies: list[float] = []
    empty = 0
    try:
        await store.open()
        await store.list_tasks(limit=1)  # a pooled connection, warm
        ready.put(name)
        go.wait()
        start = time.time()
        while True:
            began = time.perf_counter()
            claimed = await store.claim(worker=name, queues=["default"], limit=1,
                                        lease_seconds=30)
            elapsed = time.perf_counter() - began
            if not claimed:
                empty += 1
                break
            latencies.append(elapsed)
        return latencies, empty, start, time.time(), None
    except Exception as exc:
        ready.put(name)
        return latencies, empty, 0.0, 0.0, repr(exc)
    finally:
        await store.close()


@dataclass(slots=True)
class ClaimRun:
    claimers: int
    latencies: list[float]
    rate: float
    claimed: int
    errors: list[str]
    busy_cores: float  # the machine's busy CPU over the drain, in cores


def run_claims(kind: str, pg_url: str, count: int, claimers: int) -> ClaimRun:
    ctx = multiprocessing.get_context("spawn")
    with scratch_dir("claims") as workdir, database(kind, pg_url, workdir) as target:
        async def fill() -> None:
            store = target.store()
            await store.open()
            try:
                await queue_tasks(store, count, workdir)
            finally:
                await store.close()

        asyncio.run(fill())
        ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=claimer, args=(target, f"claimer-{i}", ready, go, results))
                 for i in range(claimers)]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=60)
        busy0, go_at = machine_cpu(), time.time()
        go.set()
        outcomes = [results.get(timeout=600) for _ in procs]
        busy1, done_at = machine_cpu(), time.time()
        for proc in procs:
            proc.join(timeout=STOP_LIMIT)
    latencies = [lat for outcome in outcomes for lat in outcome[0]]
    errors = [outcome[4] for outcome in outcomes if outcome[4] is not None]
    starts = [o[2] for o in outcomes if o[4] is None]
    ends = [o[3] for o in outcomes if o[4] is None]
    span = max(ends) - min(starts) if starts else 0.0
    return ClaimRun(claimers, latencies, len(latencies) / span if span else 0.0,
                    len(latencies), errors, (busy1 - busy0) / max(done_at - go_at, 1e-9))


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- main -----------------------------------------------------------------------------------


def int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 tasks, one repetition")
    parser.add_argument("--tasks", type=int, default=2000, help="commands per configuration")
    parser.add_argument("--workers", type=int_list, default=[1, 2, 4],
                        help="worker counts on PostgreSQL, comma-separated")
    parser.add_argument("--concurrency", type=int, default=8, help="ONESHOT_CONCURRENCY per worker")
    parser.add_argument("--pg-url", default=os.environ.get("ONESHOT_TEST_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions of the throughput runs (default 1)")
    parser.add_argument("--claim-tasks", type=int, default=2000,
                        help="tasks drained by the claimers")
    parser.add_argument("--claimers", type=int_list, default=[1, 2, 4],
                        help="concurrent claimer processes, comma-separated")
    parser.add_argument("--claim-reps", type=int, default=None,
                        help="claim repetitions (default 3, --quick 1)")
    parser.add_argument("--claims-on", type=lambda v: v.split(","), default=["postgresql"],
                        help="engines for the claim part: postgresql[,sqlite]")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite comparison")
    parser.add_argument("--no-claims", action="store_true", help="skip the claim latency part")
    args = parser.parse_args()
    count = 200 if args.quick else args.tasks
    claim_count = 200 if args.quick else args.claim_tasks
    reps = args.reps or 1
    claim_reps = args.claim_reps or (1 if args.quick else 3)
    began = time.monotonic()
    sqlite_part = "" if args.no_sqlite else " + 1 on SQLite"
    print(f"bench_workers: {count} x `true`, workers {args.workers} on PostgreSQL{sqlite_part}, "
          f"concurrency {args.concurrency} each, {reps} repetition(s); {machine_summary()}")
    problem = pg_problem(args.pg_url)
    if problem:
        print(f"  PostgreSQL parts skipped: {problem}")

    configs: list[tuple[str, int]] = []
    if problem is None:
        configs += [("postgresql", n) for n in args.workers]
    if not args.no_sqlite:
        configs.append(("sqlite", 1))
    if configs:  # unrecorded: warms the page cache for the worker's imports
        run_fleet(configs[0][0], 1, 20, args.concurrency, args.pg_url, "warm-up")
    runs: dict[tuple[str, int], list[FleetRun]] = {c: [] for c in configs}
    for rep in range(reps):
        shift = rep % len(configs) if configs else 0
        order = configs[shift:] + configs[:shift]
        if rep % 2:
            order.reverse()
        for kind, workers in order:
            run = run_fleet(kind, workers, count, args.concurrency, args.pg_url,
                            f"{kind} x{workers}")
            runs[(kind, workers)].append(run)
            print(f"  rep {rep + 1}/{reps} {run.label}: {run.wall:.2f} s, {run.rate:,.0f} "
                  f"tasks/s (start->end {run.span_rate:,.0f}/s), start-up {run.startup:.2f} s, "
                  f"{run.busy_cores:.2f} cores busy, CPU ms/task: workers {run.worker_cpu_ms:.1f}, "
                  f"server {run.server_cpu_ms:.1f}, machine "
                  f"{run.machine_cpu_ms:.1f}; "
                  f"claims per worker {run.claimed}", flush=True)
            for line in run.problems[:5]:
                print(f"    problem: {line}")
            if len(run.problems) > 5:
                print(f"    ... {len(run.problems) - 5} more problem lines")

    claim_runs: dict[tuple[str, int], list[ClaimRun]] = {}
    engines = [] if args.no_claims else [
        e for e in args.claims_on if e == "sqlite" or (e == "postgresql" and problem is None)]
    for rep in range(claim_reps):
        ks = list(args.claimers) if rep % 2 == 0 else list(reversed(args.claimers))
        for kind, k in [(kind, k) for kind in engines for k in ks]:
            claim_run = run_claims(kind, args.pg_url, claim_count, k)
            claim_runs.setdefault((kind, k), []).append(claim_run)
            print(f"  claims rep {rep + 1}/{claim_reps} {kind} K={k}: {claim_run.claimed} claims, "
                  f"{claim_run.rate:,.0f}/s, p50 "
                  f"{percentile(claim_run.latencies, 50) * 1000:.2f} ms, p99 "
                  f"{percentile(claim_run.latencies, 99) * 1000:.2f} ms, "
                  f"{claim_run.busy_cores:.2f} cores busy"
                  + (f", errors {claim_run.errors}" if claim_run.errors else ""), flush=True)

    print()
    if runs:
        base_key = ("postgresql", 1) if ("postgresql", 1) in runs else configs[0]
        rows = []
        for group in runs.values():
            ratios = [r.rate / b.rate for r, b in zip(group, runs[base_key], strict=True)
                      if b.rate]
            rows.append([
                group[0].label,
                spread([r.rate for r in group]),
                f"{median(ratios):.2f}x",
                spread([r.span_rate for r in group]),
                f"{median([r.wall for r in group]):.2f}",
                f"{median([r.startup for r in group]):.2f}",
                f"{median([r.busy_cores for r in group]):.2f}",
                f"{median([r.worker_cpu_ms for r in group]):.1f} / "
                f"{median([r.server_cpu_ms for r in group]):.1f} / "
                f"{median([r.machine_cpu_ms for r in group]):.1f}",
                str(sum(len(r.problems) for r in group)),
            ])
        print_table(["configuration", "tasks/s median [min-max]", f"vs {runs[base_key][0].label}",
                     "start->end tasks/s", "wall s", "start-up s", "cores busy",
                     "CPU ms/task workers / pg server / machine", "problems"], rows)
        print(f"\n{count} tasks per run, {reps} run(s) per configuration; tasks/s = tasks / "
              "(first spawn -> all terminal); ratio = median of per-repetition ratios")
    if claim_runs:
        print()
        rows = []
        for (kind, k), claim_group in claim_runs.items():
            pooled = [lat for c in claim_group for lat in c.latencies]
            rows.append([kind, str(k), f"{percentile(pooled, 50) * 1000:.2f}",
                         f"{percentile(pooled, 99) * 1000:.2f}",
                         spread([c.rate for c in claim_group]),
                         f"{median([c.busy_cores for c in claim_group]):.2f}", str(len(pooled)),
                         str(sum(len(c.errors) for c in claim_group))])
        print_table(["engine", "claimers", "claim p50 ms", "claim p99 ms",
                     "claims/s median [min-max]", "cores busy", "claims timed", "errors"],
                    rows)
        print(f"\n{claim_count} tasks drained per run, {claim_reps} run(s) per K; "
              "percentiles pooled over runs")
    print(f"at the end: {load_summary()}; run time {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
