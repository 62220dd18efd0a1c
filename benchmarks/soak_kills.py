"""Soak: one `oneshot worker` at a time, SIGKILLed at random moments under load, many times.

    .venv/bin/python benchmarks/soak_kills.py [--kills 30] [--commands 300] [--workflows 30]
                                              [--seed N] [--db URL]

The longer form of ``tests/fleet/test_kill_loop.py`` (4 kills over 70 tasks in CI): the same
workload (short commands and five-step workflows that leave a side effect per run) on SQLite
by default, or on ``--db`` (a PostgreSQL URL). Each round starts a worker, kills it with
SIGKILL after a seeded random 0.5 to 2.5 s, and starts the next; a last worker runs everything
to the end. Then it checks the recovery invariants (every task completed, every command ran
once with its output stored once, workflow steps ran once except one per takeover, no stray
process) and prints the counts and the time taken. Exit status 1 if an invariant broke.
"""

from __future__ import annotations

import argparse
import os
import random
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
    queue_everything,
    stray_processes,
)

from durable.states import TaskState  # noqa: E402
from tests.support import Database  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--workflows", type=int, default=30)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="oneshot-soak-") as scratch:
        tmp = Path(scratch)
        os.environ["XDG_DATA_HOME"] = str(tmp / "data")  # the spool of a server database
        url = args.db or f"sqlite+aiosqlite:///{tmp / 'db' / 'oneshot.db'}"
        fleet = Fleet(Database("postgres" if args.db else "sqlite", url), tmp)
        effects = tmp / "effects"
        started = time.monotonic()
        tags = queue_everything(fleet, effects, args.commands, args.workflows)
        moments = random.Random(args.seed)
        try:
            for kill in range(args.kills):
                worker = fleet.start_worker()
                time.sleep(moments.uniform(0.5, 2.5))
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                print(f"kill {kill + 1:3d}: {finished(fleet):5d} of {len(tags)} tasks done",
                      flush=True)
            last = fleet.start_worker()
            fleet.wait("every task", lambda: finished(fleet) == len(tags))
            last.send_signal(signal.SIGTERM)
            last.wait(timeout=120)
        finally:
            for proc in fleet.workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        elapsed = time.monotonic() - started
        results = everything(fleet, list(tags))
        takeovers = sum(1 for _, history, _ in results.values() for row in history
                        if row.to_state is TaskState.RECOVERING)
        print(f"seed {args.seed}: {args.kills} kills, {len(tags)} tasks, {takeovers} takeovers,"
              f" {elapsed:.1f} s")
        try:
            assert_each_ran_once(results, tags, effects)
            strays = stray_processes(fleet)
            assert not strays, strays
        except AssertionError as broken:
            print(f"INVARIANT BROKEN: {broken}")
            return 1
        print("invariants held: every task completed, every command ran once with its output "
              "stored once, steps re-ran only where a kill interrupted them, no stray process")
        return 0


if __name__ == "__main__":
    sys.exit(main())
