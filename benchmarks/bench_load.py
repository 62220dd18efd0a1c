"""Load: N tasks submitted at once to one `oneshot worker` running 50 at a time.

    .venv/bin/python benchmarks/bench_load.py [--tasks 100,1000,3000] [--concurrency 50]
                                              [--db URL]

For each size: queue that many short commands (each appends its tag to a file, sleeps 0.2 s,
prints a line) straight into the database, start one worker, and wait until all have ended.
Prints the wall time, throughput and the worker's peak resident set size (``VmHWM``), and
checks every task completed with its whole history and output, each command once. The peak RSS
side by side across sizes shows whether memory grows with the number of tasks (it should not:
tasks are claimed as slots free up, and output is streamed in bounded batches).
``tests/fleet/test_load.py`` runs the 1,000-task case in CI.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fleet")]

from fleet_support import (  # noqa: E402
    Fleet,
    assert_each_ran_once,
    everything,
    finished,
    peak_rss_bytes,
    queue_everything,
)

from tests.support import Database  # noqa: E402


def run(tasks: int, concurrency: int, db: str | None) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="oneshot-load-") as scratch:
        tmp = Path(scratch)
        os.environ["XDG_DATA_HOME"] = str(tmp / "data")
        url = db or f"sqlite+aiosqlite:///{tmp / 'db' / 'oneshot.db'}"
        fleet = Fleet(Database("postgres" if db else "sqlite", url), tmp)
        effects = tmp / "effects"
        tags = queue_everything(fleet, effects, commands=tasks, workflows=0)
        fleet.env["ONESHOT_CONCURRENCY"] = str(concurrency)
        started = time.monotonic()
        worker = fleet.start_worker()
        try:
            fleet.wait("every task", lambda: finished(fleet) == tasks)
            elapsed = time.monotonic() - started
            peak = peak_rss_bytes(worker.pid)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
        assert_each_ran_once(everything(fleet, list(tags)), tags, effects)
        return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="100,1000,3000",
                        help="comma-separated numbers of tasks")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    print(f"{'tasks':>6} {'seconds':>8} {'tasks/s':>8} {'worker peak RSS':>16}")
    for tasks in (int(n) for n in args.tasks.split(",")):
        elapsed, peak = run(tasks, args.concurrency, args.db)
        print(f"{tasks:>6} {elapsed:>8.1f} {tasks / elapsed:>8.1f} {peak / 2**20:>12.0f} MiB",
              flush=True)
    print("every task completed with its whole history and output, each command once")


if __name__ == "__main__":
    main()
