"""Durable steps per second: Oneshot vs DBOS Transact vs bare sqlite3, side by side in one run.

    .venv/bin/pip install -e '.[bench]'        # DBOS Transact, the comparison
    .venv/bin/python benchmarks/bench_steps.py [--quick] [--reps N]
    .venv/bin/python benchmarks/bench_steps.py --profile   # cProfile of Oneshot, sequential

Every side uses SQLite in WAL mode at ``synchronous = FULL`` on a fresh database file per
repetition and workload (under ``$ONESHOT_BENCH_DIR``, default the temp dir). A step is a
trivial async function ``step(i: int) -> int`` whose result is checkpointed before the workflow
goes on. Workloads:

* sequential: one workflow of 1,000 steps, each awaited before the next;
* concurrent: 100 workflows of 10 steps each, all started, then all awaited.

Oneshot runs under ``AsyncOrchestrator`` (with ``concurrency`` raised to 100 so the 100
workflows really run at once); DBOS with ``@DBOS.workflow`` / ``@DBOS.step`` async functions
and ``DBOS.start_workflow_async``. The baseline is bare sqlite3: 1,000 single-row
INSERT + COMMIT, the physical limit of one durable commit per step. Timings cover the workload
only (orchestrator open and DBOS launch are outside). The order of Oneshot and DBOS alternates
between repetitions.

Targets: Oneshot/DBOS >= 4x sequential, >= 30x concurrent (100 x 10).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sqlite3
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

from _common import machine_summary, median, print_table, remove_db, scratch_dir, spread, verdict

from config import load_settings
from durable import durable, workflow
from orchestrator import AsyncOrchestrator

try:
    from dbos import DBOS
except ImportError as exc:  # pragma: no cover - only without the bench extra
    raise SystemExit("DBOS is not installed: .venv/bin/pip install -e '.[bench]'") from exc

SYNCHRONOUS = "FULL"
SEQ_STEPS = 1_000
CONC_WORKFLOWS, CONC_STEPS = 100, 10
BARE_ROWS = 1_000
TARGETS = {"sequential": 4.0, "concurrent": 30.0}

Workload = tuple[str, int, int]  # (name, workflows, steps per workflow)
WORKLOADS: list[Workload] = [
    ("sequential", 1, SEQ_STEPS),
    ("concurrent", CONC_WORKFLOWS, CONC_STEPS),
]


# --- Oneshot ------------------------------------------------------------------------------

@durable
async def oneshot_step(i: int) -> int:
    return i


@workflow
async def oneshot_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await oneshot_step(i)
    return total


async def run_oneshot(db: Path, workflows: int, steps: int) -> float:
    """Seconds to run ``workflows`` workflows of ``steps`` steps, all started then awaited."""
    settings = load_settings(overrides={
        "database.url": f"sqlite:///{db}",
        "database.synchronous": SYNCHRONOUS,
        "concurrency": max(workflows, 1),
    })
    async with AsyncOrchestrator(settings) as orch:
        started = time.perf_counter()
        # Started together (as concurrent callers would), on both sides.
        handles = await asyncio.gather(
            *(orch.start(oneshot_steps, steps) for _ in range(workflows)))
        results = await asyncio.gather(*(handle.result() for handle in handles))
        elapsed = time.perf_counter() - started
    check(results, steps)
    return elapsed


# --- DBOS Transact ------------------------------------------------------------------------

@DBOS.step()
async def dbos_step(i: int) -> int:
    return i


@DBOS.workflow()
async def dbos_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await dbos_step(i)
    return total


async def run_dbos(db: Path, workflows: int, steps: int) -> float:
    """The same workload on DBOS, its system database a SQLite file created in WAL mode."""
    create_wal_db(db)
    DBOS(config={"name": "oneshot-bench", "system_database_url": f"sqlite:///{db}",
                 "log_level": "WARNING"})
    try:
        DBOS.launch()
        check_dbos_pragmas()
        started = time.perf_counter()
        handles = await asyncio.gather(
            *(DBOS.start_workflow_async(dbos_steps, steps) for _ in range(workflows)))
        results = await asyncio.gather(*(handle.get_result() for handle in handles))
        elapsed = time.perf_counter() - started
    finally:
        DBOS.destroy()
    check(results, steps)
    return elapsed


def check_dbos_pragmas() -> None:
    """DBOS sets no synchronous level: make sure its connections run at FULL, in WAL."""
    from dbos._dbos import _get_dbos_instance  # private; only to read two pragmas

    with _get_dbos_instance()._sys_db.engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    if (journal, sync) != ("wal", 2):
        raise SystemExit(f"DBOS system database: journal_mode={journal}, synchronous={sync};"
                         " expected wal, 2 (FULL)")


# --- bare sqlite3 -------------------------------------------------------------------------

def create_wal_db(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def run_bare(db: Path, rows: int) -> float:
    """Seconds for ``rows`` single-row INSERT + COMMIT transactions (one fsync each)."""
    create_wal_db(db)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS}")
        conn.execute("CREATE TABLE steps (seq INTEGER PRIMARY KEY, result TEXT NOT NULL)")
        started = time.perf_counter()
        for i in range(rows):
            conn.execute("BEGIN")
            conn.execute("INSERT INTO steps (seq, result) VALUES (?, ?)", (i, str(i)))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return elapsed


# --- driver -------------------------------------------------------------------------------

def check(results: list[int], steps: int) -> None:
    expected = steps * (steps - 1) // 2
    if any(result != expected for result in results):
        raise SystemExit(f"wrong workflow result: {results[:3]}... expected {expected}")


Runner = Callable[[Path, int, int], Awaitable[float]]
SYSTEMS: dict[str, Runner] = {"Oneshot": run_oneshot, "DBOS": run_dbos}


async def measure(reps: int) -> dict[tuple[str, str], list[float]]:
    """Steps/s per (system, workload) for each repetition; bare sqlite3 under 'bare'."""
    rates: dict[tuple[str, str], list[float]] = {}
    with scratch_dir("steps") as tmp:
        for system, run in SYSTEMS.items():  # warm-up: imports, first launch, caches
            await run(tmp / f"warmup-{system}.db", 2, 10)
        for rep in range(reps):
            order = list(SYSTEMS) if rep % 2 == 0 else list(reversed(SYSTEMS))
            for name, workflows, steps in WORKLOADS:
                for system in order:
                    db = tmp / f"{system}-{name}-{rep}.db"
                    elapsed = await SYSTEMS[system](db, workflows, steps)
                    rates.setdefault((system, name), []).append(workflows * steps / elapsed)
                    remove_db(db)
            db = tmp / f"bare-{rep}.db"
            rates.setdefault(("bare sqlite3", "sequential"), []).append(
                BARE_ROWS / run_bare(db, BARE_ROWS))
            remove_db(db)
            print(f"  repetition {rep + 1}/{reps} done", flush=True)
    return rates


def report(rates: dict[tuple[str, str], list[float]]) -> None:
    labels = {"sequential": f"1 x {SEQ_STEPS:,} sequential",
              "concurrent": f"{CONC_WORKFLOWS} x {CONC_STEPS} concurrent"}
    rows = [[system, labels[name], spread(values)] for (system, name), values in rates.items()]
    print()
    print_table(["system", "workload", "steps/s median [min-max]"], rows)
    print()
    med = {key: median(values) for key, values in rates.items()}
    bare = med[("bare sqlite3", "sequential")]
    for name, _, _ in WORKLOADS:
        ratio = med[("Oneshot", name)] / med[("DBOS", name)]
        # The two ran back to back in each repetition: their per-repetition ratio shows how
        # much of the spread is the machine (disk, other load) rather than either system.
        paired = [o / d for o, d in zip(rates[("Oneshot", name)], rates[("DBOS", name)],
                                        strict=True)]
        print(f"Oneshot/DBOS  {name:<10}  {verdict(ratio, TARGETS[name], at_least=True)};"
              f" per repetition {spread(paired, '{:.1f}x')}")
    for name, _, _ in WORKLOADS:
        print(f"Oneshot/bare  {name:<10}  {med[('Oneshot', name)] / bare:.2f}x"
              f"  ({med[('Oneshot', name)]:,.0f} vs {bare:,.0f} commits/s)")


async def profile_oneshot(runs: int) -> None:
    """cProfile Oneshot's sequential workload (main thread only: the writer thread's SQLite
    work shows up as the event loop waiting in ``select``)."""
    profiler = cProfile.Profile()
    with scratch_dir("steps-profile") as tmp:
        await run_oneshot(tmp / "warmup.db", 1, 10)
        elapsed = 0.0
        for run in range(runs):
            profiler.enable()
            elapsed += await run_oneshot(tmp / f"profile-{run}.db", 1, SEQ_STEPS)
            profiler.disable()
    print(f"{runs} x {SEQ_STEPS:,} sequential steps: {runs * SEQ_STEPS / elapsed:,.0f} steps/s"
          " under cProfile")
    stats = pstats.Stats(profiler)
    for key in ("cumulative", "tottime"):
        stats.sort_stats(key).print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions instead of 5")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (overrides --quick)")
    parser.add_argument("--profile", action="store_true",
                        help="profile Oneshot's sequential workload instead of comparing")
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    if args.profile:
        asyncio.run(profile_oneshot(reps))
        return
    print(machine_summary())
    print(f"dbos {version('dbos')}, synchronous={SYNCHRONOUS}, WAL, {reps} repetitions")
    report(asyncio.run(measure(reps)))


if __name__ == "__main__":
    main()
