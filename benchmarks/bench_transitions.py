"""Transitions per second through Oneshot's store vs the same transaction in bare sqlite3.

    .venv/bin/python benchmarks/bench_transitions.py [--quick] [--synchronous FULL]

A transition is one transaction: the guarded current-state UPDATE (``WHERE id = ? AND state =
?``) and the history INSERT, then COMMIT. Measured, alternating which side goes first:

* sequential: one task moving RUNNING <-> IDLE, each transition awaited before the next;
* concurrent: 100 tasks, each an asyncio task doing K transitions (asyncio.gather). Oneshot's
  group-commit writer shares commits between them; bare sqlite3 is synchronous, so its
  "concurrent" run is the same per-transaction commits interleaved across the 100 rows.

Targets: Oneshot/raw >= 0.3x sequential, >= 1x with 100 concurrent tasks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from _common import (
    base_parser,
    create_schema,
    load_summary,
    machine_summary,
    median,
    print_table,
    raw_connect,
    scratch_dir,
    spread,
    verdict,
)

from config import normalize_database_url
from durable.engine import ConnectionOptions
from durable.persistence import PersistenceManager
from durable.records import NewTask
from durable.states import TaskState

RUNNING, IDLE = TaskState.RUNNING.value, TaskState.IDLE.value
FLIP = {RUNNING: IDLE, IDLE: RUNNING}

# The baseline's SQL: the same statements Oneshot's writer runs for a task and a transition.
INSERT_TASK = (
    "INSERT INTO tasks (id, name, kind, argv, cwd, workflow, input, queue, state, created_at,"
    " updated_at, attempt, owner) VALUES (?, NULL, 'command', '[\"true\"]', NULL, NULL, NULL,"
    " 'default', ?, ?, ?, 1, NULL)"
)
UPDATE_STATE = (
    "UPDATE tasks SET state = ?, updated_at = ? WHERE id = ? AND state = ? RETURNING attempt"
)
INSERT_HISTORY = (
    "INSERT INTO task_states (task_id, from_state, to_state, at, reason, worker, attempt)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class Run:
    rate: float  # transitions per second
    commits: int = 0
    operations: int = 0


async def oneshot_run(db: Path, synchronous: str, tasks: int, per_task: int) -> Run:
    options = ConnectionOptions(normalize_database_url(str(db)), synchronous=synchronous)
    async with PersistenceManager(options) as store:
        ids = [uuid.uuid4().hex for _ in range(tasks)]
        for task_id in ids:
            await store.create_task(NewTask(id=task_id, kind="command", argv=["true"]))
            await store.transition(task_id, TaskState.CREATED, TaskState.RUNNING)

        async def mover(task_id: str) -> None:
            state = TaskState.RUNNING
            for _ in range(per_task):
                target = TaskState(FLIP[state.value])
                await store.transition(task_id, state, target, reason="bench")
                state = target

        commits, operations = store.writer.commits, store.writer.operations
        start = time.perf_counter()
        if tasks == 1:
            await mover(ids[0])
        else:
            await asyncio.gather(*(mover(task_id) for task_id in ids))
        elapsed = time.perf_counter() - start
        return Run(tasks * per_task / elapsed, store.writer.commits - commits,
                   store.writer.operations - operations)


def raw_run(db: Path, synchronous: str, tasks: int, per_task: int) -> Run:
    create_schema(db)
    conn = raw_connect(db, synchronous)
    cur = conn.cursor()
    ids = [uuid.uuid4().hex for _ in range(tasks)]
    now = time.time()
    for task_id in ids:
        cur.execute("BEGIN IMMEDIATE")
        cur.execute(INSERT_TASK, (task_id, RUNNING, now, now))
        cur.execute(INSERT_HISTORY, (task_id, None, RUNNING, now, None, None, 1))
        cur.execute("COMMIT")
    states = dict.fromkeys(ids, RUNNING)
    start = time.perf_counter()
    for _ in range(per_task):
        for task_id in ids:  # round-robin: the interleaving 100 concurrent tasks produce
            old = states[task_id]
            new = FLIP[old]
            now = time.time()
            cur.execute("BEGIN IMMEDIATE")
            row = cur.execute(UPDATE_STATE, (new, now, task_id, old)).fetchone()
            if row is None:
                raise RuntimeError(f"task {task_id} was not in {old}")
            cur.execute(INSERT_HISTORY, (task_id, old, new, now, "bench", None, row[0]))
            cur.execute("COMMIT")
            states[task_id] = new
    elapsed = time.perf_counter() - start
    conn.close()
    return Run(tasks * per_task / elapsed, commits=tasks * per_task,
               operations=tasks * per_task)


def measure(label: str, tasks: int, per_task: int, reps: int, synchronous: str,
            workdir: Path) -> tuple[list[Run], list[Run]]:
    ours: list[Run] = []
    raw: list[Run] = []
    # One unrecorded pair first: the first run in a process pays for imports and cold caches.
    asyncio.run(oneshot_run(workdir / f"{label}-warmup-oneshot.db", synchronous, tasks, 10))
    raw_run(workdir / f"{label}-warmup-raw.db", synchronous, tasks, 10)
    for rep in range(reps):
        sides = ["oneshot", "raw"] if rep % 2 == 0 else ["raw", "oneshot"]
        for side in sides:
            db = workdir / f"{label}-{side}-{rep}.db"
            if side == "oneshot":
                ours.append(asyncio.run(oneshot_run(db, synchronous, tasks, per_task)))
            else:
                raw.append(raw_run(db, synchronous, tasks, per_task))
        print(f"  {label} rep {rep + 1}/{reps}: oneshot {ours[-1].rate:,.0f}/s, "
              f"raw {raw[-1].rate:,.0f}/s, ratio {ours[-1].rate / raw[-1].rate:.2f}x, "
              f"{ours[-1].operations / max(ours[-1].commits, 1):.1f} ops/commit", flush=True)
    return ours, raw


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=None, help="transitions, one task")
    parser.add_argument("--tasks", type=int, default=100, help="concurrent tasks")
    parser.add_argument("--per-task", type=int, default=None, help="transitions per task")
    args = parser.parse_args()
    # Many short paired slices rather than a few long ones: the disk is shared, and a pair
    # measured back to back sees the same conditions.
    reps = args.reps or (5 if args.quick else 15)
    sequential = args.sequential or (500 if args.quick else 1000)
    per_task = args.per_task or (10 if args.quick else 20)
    print(f"bench_transitions: synchronous={args.synchronous}, {reps} paired repetitions; "
          f"{machine_summary()}")

    rows, verdicts = [], []
    with scratch_dir("transitions") as workdir:
        cases = [("sequential", 1, sequential, 0.3),
                 (f"{args.tasks} concurrent", args.tasks, per_task, 1.0)]
        for label, tasks, count, target in cases:
            print(f"{label}: {tasks} task(s) x {count} transitions")
            ours, raw = measure(label.split()[-1], tasks, count, reps, args.synchronous, workdir)
            ratios = [o.rate / r.rate for o, r in zip(ours, raw, strict=True)]
            commits = median([o.commits for o in ours])
            per_commit = median([o.operations / o.commits for o in ours])
            rows.append([label, spread([o.rate for o in ours]), spread([r.rate for r in raw]),
                         f"{median(ratios):.2f}x", f"{commits:,.0f} / {tasks * count:,}",
                         f"{per_commit:.1f}"])
            verdicts.append(f"{label}: {verdict(median(ratios), target, at_least=True)}")
    print()
    print_table(["case", "oneshot tx/s median [min-max]", "raw sqlite3 tx/s", "ratio",
                 "commits / transitions", "ops/commit"], rows)
    print("\nratio = median over repetitions of (oneshot / raw) measured back to back")
    for line in verdicts:
        print(line)
    print(f"at the end: {load_summary()}")


if __name__ == "__main__":
    main()
