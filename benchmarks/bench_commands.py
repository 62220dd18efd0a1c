"""Wall time of N short commands (``true``) through AsyncOrchestrator, persistence on vs off.

    .venv/bin/python benchmarks/bench_commands.py [--quick] [--synchronous FULL]

"On" stores everything in a SQLite file (every transition committed before the task goes on)
and spools output beside it, on disk; "off" uses the in-memory store and a RAM-backed spool
(/dev/shm). Every command runs under the shim in both modes. Both run in this process,
alternating which goes first, for two shapes: sequential (``await orch.run`` one after
another) and concurrent (submit all N, limit 8, then await every result). Timed from the first
submit to the last result, with the store open (opening and migrating the database is reported
separately, not included).

Target: on/off wall-time ratio <= 1.15.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    base_parser,
    load_summary,
    machine_summary,
    median,
    print_table,
    remove_db,
    scratch_dir,
    spread,
    verdict,
)

from config import load_settings
from durable.persistence import PersistenceManager
from durable.states import TaskState
from orchestrator import AsyncOrchestrator

TARGET = 1.15


@dataclass(frozen=True, slots=True)
class Run:
    wall: float  # seconds for all commands
    open_time: float  # seconds to open (and migrate) the store
    commits: int = 0


async def run_commands(db: Path, persist: bool, count: int, concurrency: int,
                       synchronous: str) -> Run:
    settings = load_settings(overrides={
        "database.url": str(db), "database.synchronous": synchronous,
        "persistence.enabled": persist, "concurrency": max(concurrency, 1),
    })
    opened = time.perf_counter()
    async with AsyncOrchestrator(settings) as orch:
        start = time.perf_counter()
        if concurrency <= 1:
            results = [await orch.run(["true"]) for _ in range(count)]
        else:
            handles = [await orch.submit(["true"]) for _ in range(count)]
            results = [await handle.result() for handle in handles]
        wall = time.perf_counter() - start
        store = orch.store
        commits = store.writer.commits if isinstance(store, PersistenceManager) else 0
    if any(r.state is not TaskState.COMPLETED for r in results):
        raise RuntimeError("a command did not complete")
    return Run(wall, start - opened, commits)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="commands per batch")
    parser.add_argument("--concurrency", type=int, default=8, help="limit in concurrent mode")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    count = 50 if args.quick else args.count
    print(f"bench_commands: {count} x `true`, synchronous={args.synchronous}, {reps} "
          f"repetitions; {machine_summary()}")

    rows, verdicts = [], []
    with scratch_dir("commands") as workdir:
        db = workdir / "oneshot.db"
        for label, concurrency in (("sequential", 1), (f"concurrency {args.concurrency}",
                                                       args.concurrency)):
            asyncio.run(run_commands(db, True, 10, concurrency, args.synchronous))  # warm-up
            remove_db(db)
            on: list[Run] = []
            off: list[Run] = []
            for rep in range(reps):
                for persist in (True, False) if rep % 2 == 0 else (False, True):
                    run = asyncio.run(run_commands(db, persist, count, concurrency,
                                                   args.synchronous))
                    (on if persist else off).append(run)
                    remove_db(db)
                print(f"  {label} rep {rep + 1}/{reps}: on {on[-1].wall:.3f}s, "
                      f"off {off[-1].wall:.3f}s, ratio {on[-1].wall / off[-1].wall:.3f}",
                      flush=True)
            ratios = [a.wall / b.wall for a, b in zip(on, off, strict=True)]
            rows.append([
                label,
                spread([r.wall for r in on], "{:.3f}"),
                spread([r.wall for r in off], "{:.3f}"),
                f"{median(ratios):.3f}",
                f"{median([r.wall for r in on]) / count * 1000:.2f} / "
                f"{median([r.wall for r in off]) / count * 1000:.2f}",
                f"{median([r.commits for r in on]) / count:.1f}",
                f"{median([r.open_time for r in on]) * 1000:.0f} ms",
            ])
            verdicts.append(f"{label}: {verdict(median(ratios), TARGET, at_least=False)}")
    print()
    print_table(["mode", "on: wall s median [min-max]", "off: wall s", "on/off",
                 "ms per command on / off", "commits per command", "open+migrate"], rows)
    print("\non/off = median over repetitions of the paired ratio (same repetition)")
    for line in verdicts:
        print(line)
    print(f"at the end: {load_summary()}")


if __name__ == "__main__":
    main()
