"""History at scale: `ls`, `show` and `logs --tail` on a large generated database, and prune.

    .venv/bin/python benchmarks/bench_history.py [--quick] [--rebuild] [--reps N] [--db PATH]
                                                 [--no-prune] [--no-vacuum]

The database (100,000 tasks, 1,000,000 transitions, 2,000,000 log fragments of 200 bytes;
``--quick``: a tenth of each) is migrated with ``oneshot --db PATH db upgrade`` and then filled
with raw ``sqlite3`` ``executemany`` (journal off, synchronous OFF, rows in creation order as a
real history is written), then put back in WAL mode. It is kept under the scratch directory
(``/tmp``) and reused by later runs when its sidecar ``.json`` matches (same sizes, same schema
revision); ``--rebuild`` forces a new one.

Shape: creation times spread over 60 days; 10 tasks RUNNING (created in the last hour), the
others COMPLETED / FAILED / INTERRUPTED; 10 transitions per task; 18 fragments (4 lines of 50
bytes each) per task, except 20 "big" tasks (the 10 running ones and 10 finished) with 10,000
fragments (2 MB, 40,000 lines) each.

Measured:

1. In-process query time through one open ``PersistenceManager`` (what each CLI command
   awaits), median of ``--reps`` calls after warm-up, rotating over a few task ids: ``ls``
   (``list_tasks(states=[RUNNING], limit=50)``, and other filters for reference), ``show``
   (``get_task`` + ``history`` + ``log_size`` + ``load_steps``), ``logs --tail 100``
   (``read_logs(id, tail=100)``, the fragment tail, and ``read_output(..., tail=100)``, the
   CLI's 100-line tail). Each statement's ``EXPLAIN QUERY PLAN`` is printed.
2. Whole CLI calls (``oneshot ls --state RUNNING``, ``show ID``, ``logs ID --tail 100``), wall
   time, median of ``--cli-reps``, against ``oneshot --help`` (the start-up floor) and a bare
   interpreter; plus the heaviest imports (``-X importtime``) of the CLI.
3. Prune of 50% of the history (``retention.max_age_days = 30`` on a copy of the database):
   rows deleted per second, and the longest chunk (submit to commit, as prune reports it, and
   between chunk callbacks) against the longest wait of a concurrent writer in another process
   (``BEGIN IMMEDIATE``; one-row ``UPDATE``; ``COMMIT`` every 10 ms). Then ``oneshot db vacuum``
   on the copy (one exclusive rewrite), timed.

Targets (issue 5): each query < 50 ms; prune's longest write-lock hold < 200 ms per chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    base_parser,
    load_summary,
    machine_summary,
    median,
    print_table,
    spread,
)

DAY = 86400.0
SPAN_DAYS = 60
PRUNE_AGE_DAYS = 30
N_RUNNING = 10
N_BIG_FINISHED = 10
LINE_BYTES = 50
LINES_PER_FRAGMENT = 4
QUERY_TARGET_MS = 50.0
CHUNK_TARGET_MS = 200.0
BUILD_VERSION = 1
ONESHOT = str(Path(sys.executable).with_name("oneshot"))
NAMES = (("build-", 40), ("test-", 40), ("deploy-", 19), ("nightly-backup-", 1))
ENDINGS = (("COMPLETED", 85, 0), ("FAILED", 12, 1), ("INTERRUPTED", 3, -15))
SIZES = {
    "full": {"tasks": 100_000, "transitions_per_task": 10, "fragments": 2_000_000,
             "big_fragments": 10_000},
    "quick": {"tasks": 10_000, "transitions_per_task": 10, "fragments": 200_000,
              "big_fragments": 1_000},
}


# -- building the database ------------------------------------------------------------------


def fragment_pool(rng: random.Random, count: int = 1024) -> list[bytes]:
    """Distinct 200-byte fragments of four 50-byte lines (SQLite does not compress)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 "
    pool = []
    for i in range(count):
        lines = [f"{i:05d}.{n} " + "".join(rng.choices(alphabet, k=LINE_BYTES - 9)) + "\n"
                 for n in range(LINES_PER_FRAGMENT)]
        pool.append("".join(lines).encode())
    return pool


def weighted(rng: random.Random, table: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(table, weights=[row[1] for row in table])[0]


def build(db: Path, size: dict[str, int]) -> dict[str, Any]:
    """Migrate with the CLI, then fill with raw executemany; returns the sidecar facts."""
    from durable.migrate import HEAD

    for suffix in ("", "-wal", "-shm", "-journal", ".json"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([ONESHOT, "--db", str(db), "db", "upgrade"], check=True,
                   capture_output=True)
    rng = random.Random(20261126)
    pool = fragment_pool(rng)
    n_tasks, per_task = size["tasks"], size["transitions_per_task"]
    now = time.time()
    ids = sorted(f"{rng.getrandbits(128):032x}" for _ in range(n_tasks))
    specials = rng.sample(range(n_tasks), N_RUNNING + N_BIG_FINISHED)
    running, big_finished = set(specials[:N_RUNNING]), set(specials[N_RUNNING:])
    big = running | big_finished
    big_fragments = size["big_fragments"]
    small_total = size["fragments"] - big_fragments * len(big)
    base, extra = divmod(small_total, n_tasks - len(big))
    created = [now - 3600 * rng.random() if i in running else
               now - SPAN_DAYS * DAY * rng.random() for i in range(n_tasks)]
    # Big finished tasks ran long ago enough to survive a 30-day prune only by chance: put
    # half of them in the newer half, so both prune and tail see some.
    for n, i in enumerate(sorted(big_finished)):
        created[i] = now - (PRUNE_AGE_DAYS * DAY * (0.5 if n % 2 else 1.5)) * rng.random()

    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("PRAGMA journal_mode = OFF", "PRAGMA synchronous = OFF",
                   "PRAGMA cache_size = -1000000", "PRAGMA foreign_keys = OFF"):
        conn.execute(pragma)
    conn.execute("BEGIN")
    task_rows: list[tuple[Any, ...]] = []
    state_rows: list[tuple[Any, ...]] = []
    fragment_rows: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.executemany(
            "INSERT INTO tasks (id, name, kind, argv, cwd, queue, state, created_at, updated_at,"
            " started_at, finished_at, exit_code, error, attempt, owner, log_dropped_bytes)"
            " VALUES (?, ?, 'command', ?, '/srv/app', 'default', ?, ?, ?, ?, ?, ?, ?, 1, ?, 0)",
            task_rows)
        conn.executemany(
            "INSERT INTO task_states (task_id, from_state, to_state, at, reason, worker, attempt)"
            " VALUES (?, ?, ?, ?, ?, 'bench-host:1:000000', 1)", state_rows)
        conn.executemany("INSERT INTO log_fragments (task_id, seq, stream, at, data)"
                         " VALUES (?, ?, ?, ?, ?)", fragment_rows)
        task_rows.clear()
        state_rows.clear()
        fragment_rows.clear()

    small_seen = 0
    for i in sorted(range(n_tasks), key=created.__getitem__):
        task_id, created_at = ids[i], created[i]
        prefix = weighted(rng, NAMES)[0]
        name = f"{prefix}{rng.randrange(1000)}"
        if i in big:
            n_fragments = big_fragments
        else:
            n_fragments = base + (1 if small_seen < extra else 0)
            small_seen += 1
        started_at = created_at + 0.05
        if i in running:
            end_state, exit_code = "RUNNING", None
            finished_at = None
            last = now - 1.0
        else:
            end_state, _, exit_code = weighted(rng, ENDINGS)
            duration = 1.0 + min(rng.expovariate(1 / 300.0), 6 * 3600.0)
            if i in big:
                duration = max(duration, 600.0)
            finished_at = started_at + duration
            last = finished_at
        # CREATED, RUNNING, then IDLE/RUNNING alternations, then the ending.
        path: list[str] = ["CREATED", "RUNNING"]
        while len(path) < per_task - 1:
            path.append("IDLE" if path[-1] == "RUNNING" else "RUNNING")
        path.append(end_state if end_state != path[-1] else "IDLE")
        if i in running and path[-1] != "RUNNING":
            path[-1] = "RUNNING"
        step = (last - created_at) / max(len(path) - 1, 1)
        previous = None
        for n, state in enumerate(path):
            at = created_at + n * step
            reason = "submitted" if n == 0 else state.lower()
            state_rows.append((task_id, previous, state, at, reason))
            previous = state
        error = None if exit_code in (0, None) else f"exit {exit_code}"
        owner = "bench-host:1:000000" if i in running else None
        task_rows.append((task_id, name, json.dumps(["sh", "-c", f"make {name}"]), end_state,
                          created_at, last, started_at, finished_at, exit_code, error, owner))
        span = (last - started_at) / max(n_fragments, 1)
        for seq in range(n_fragments):
            fragment_rows.append((task_id, seq, 2 if seq % 10 == 9 else 1,
                                  started_at + seq * span, pool[rng.randrange(len(pool))]))
        if len(fragment_rows) >= 100_000:
            flush()
    flush()
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    counts = {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
              for table in ("tasks", "task_states", "log_fragments")}
    conn.close()
    facts = {
        "version": BUILD_VERSION, "revision": HEAD, "size": size, "counts": counts,
        "built_at": now, "build_seconds": time.perf_counter() - started,
        "running": [ids[i] for i in sorted(running)],
        "big_finished": [ids[i] for i in sorted(big_finished)],
        "typical": [ids[i] for i in rng.sample(sorted(set(range(n_tasks)) - big), 10)],
        "db_bytes": db.stat().st_size,
    }
    Path(f"{db}.json").write_text(json.dumps(facts, indent=1))
    return facts


def ensure_database(db: Path, size: dict[str, int], rebuild: bool) -> tuple[dict[str, Any], bool]:
    from durable.migrate import HEAD

    sidecar = Path(f"{db}.json")
    if not rebuild and db.is_file() and sidecar.is_file():
        facts: dict[str, Any] = json.loads(sidecar.read_text())
        if (facts.get("version"), facts.get("revision"), facts.get("size")) == (
                BUILD_VERSION, HEAD, size):
            return facts, False
    return build(db, size), True


# -- in-process queries ---------------------------------------------------------------------


class Recorder:
    """The SQL each operation runs, captured from the engine for EXPLAIN QUERY PLAN."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.statements: dict[str, list[tuple[str, Any]]] = {}

    def __call__(self, _conn: Any, _cursor: Any, statement: str, parameters: Any,
                 _context: Any, _many: bool) -> None:
        if self.label is not None:
            seen = self.statements.setdefault(self.label, [])
            if all(statement != s for s, _ in seen):
                seen.append((statement, parameters))


async def time_op(fn: Callable[[int], Awaitable[Any]], reps: int, warmup: int = 3
                  ) -> list[float]:
    for i in range(warmup):
        await fn(i)
    times = []
    for i in range(reps):
        start = time.perf_counter()
        await fn(i)
        times.append(time.perf_counter() - start)
    return times


async def measure_queries(db: Path, facts: dict[str, Any], reps: int
                          ) -> tuple[list[dict[str, Any]], dict[str, list[tuple[str, Any]]]]:
    from sqlalchemy import event

    from config import load_settings
    from durable.persistence import store_from_settings
    from durable.states import TaskState
    from orchestrator.logview import OutputQuery, read_output

    settings = load_settings(overrides={"database.url": str(db)})

    async def open_close(_: int) -> None:
        s = store_from_settings(settings)
        await s.open()
        await s.close()

    results: list[dict[str, Any]] = []
    open_times = await time_op(open_close, max(5, reps // 3), warmup=1)
    results.append({"op": "open + close the store", "ids": "-", "times": open_times})

    store: Any = store_from_settings(settings)
    await store.open()
    recorder = Recorder()
    event.listen(store.engine.sync_engine, "before_cursor_execute", recorder)
    running, typical = facts["running"], facts["typical"]
    since_day = time.time() - DAY
    try:
        async def show(task_id: str) -> None:
            task = await store.get_task(task_id)
            await store.history(task.id)
            await store.log_size(task.id)
            await store.load_steps(task.id)

        async def line_tail(task_id: str) -> int:
            return sum([len(f.data) async for f in read_output(store, OutputQuery(task_id),
                                                                tail=100)])

        ops: list[tuple[str, str, Callable[[int], Awaitable[Any]]]] = [
            ("ls --state RUNNING", "-",
             lambda i: store.list_tasks(states=[TaskState.RUNNING], limit=50)),
            ("show ID", "running, 10k fragments", lambda i: show(running[i % len(running)])),
            ("show ID", "finished, 18 fragments", lambda i: show(typical[i % len(typical)])),
            ("read_logs(ID, tail=100)", "running, 10k fragments",
             lambda i: store.read_logs(running[i % len(running)], tail=100)),
            ("read_logs(ID, tail=100)", "finished, 18 fragments",
             lambda i: store.read_logs(typical[i % len(typical)], tail=100)),
            ("logs --tail 100 (lines)", "running, 10k fragments",
             lambda i: line_tail(running[i % len(running)])),
            ("logs --tail 100 (lines)", "finished, 18 fragments",
             lambda i: line_tail(typical[i % len(typical)])),
            ("ls (no filter)", "-", lambda i: store.list_tasks(limit=50)),
            ("ls --state COMPLETED", "-",
             lambda i: store.list_tasks(states=[TaskState.COMPLETED], limit=50)),
            ("ls --since 1d", "-", lambda i: store.list_tasks(since=since_day, limit=50)),
            ("ls --name 'nightly-backup-*'", "-",
             lambda i: store.list_tasks(name="nightly-backup-*", limit=50)),
        ]
        for label, which, fn in ops:
            recorder.label = label
            await fn(0)
            recorder.label = None
            times = await time_op(fn, reps)
            results.append({"op": label, "ids": which, "times": times})
        # What the measured calls returned, as a sanity check.
        listed = await store.list_tasks(states=[TaskState.RUNNING], limit=50)
        fragments = await store.read_logs(running[0], tail=100)
        lines = b"".join([f.data async for f in read_output(store, OutputQuery(running[0]),
                                                             tail=100)])
        checks = {"running listed": len(listed), "tail fragments": len(fragments),
                  "tail lines": lines.count(b"\n"),
                  "show history rows": len(await store.history(running[0])),
                  "show log_size": await store.log_size(running[0])}
        results.append({"op": "checks", "checks": checks})
    finally:
        await store.close()
    return results, recorder.statements


def query_plans(db: Path, statements: dict[str, list[tuple[str, Any]]]) -> dict[str, list[str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    plans = {}
    try:
        for label, entries in statements.items():
            lines = []
            for sql, params in entries:
                if "PRAGMA" in sql.upper() or "alembic_version" in sql:
                    continue
                rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", tuple(params or ())).fetchall()
                lines.append("; ".join(r[-1] for r in rows))
            plans[label] = lines
    finally:
        conn.close()
    return plans


# -- CLI calls ------------------------------------------------------------------------------


def time_cli(argv: list[str], reps: int) -> tuple[list[float], str]:
    env = {**os.environ, "COLUMNS": "160"}
    subprocess.run(argv, capture_output=True, check=False, env=env)  # warm-up
    times, out = [], ""
    for _ in range(reps):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=False, env=env)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.decode()}")
        out = proc.stdout.decode(errors="replace")
    return times, out


def import_profile(top: int = 10) -> tuple[float, list[tuple[str, float]]]:
    """What importing the CLI costs: total ms, and the heaviest packages by their modules'
    own (self) import time, in ms."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import orchestrator.cli"],
                          capture_output=True, text=True, check=False)
    totals: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        own, _, name = line[len("import time:"):].split("|")
        package = name.strip().split(".")[0]
        totals[package] = totals.get(package, 0.0) + float(own) / 1000
    heaviest = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return sum(totals.values()), heaviest


# -- prune ----------------------------------------------------------------------------------

PROBE = r"""
import json, sqlite3, sys, time, os
db, task_id, stop = sys.argv[1], sys.argv[2], sys.argv[3]
conn = sqlite3.connect(db, isolation_level=None)
for p in ("PRAGMA busy_timeout = 60000", "PRAGMA journal_mode = WAL",
          "PRAGMA synchronous = FULL"):
    conn.execute(p)
waits = []
print("ready", flush=True)
while not os.path.exists(stop):
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    got = time.perf_counter()
    conn.execute("UPDATE tasks SET updated_at = ? WHERE id = ?", (time.time(), task_id))
    conn.execute("COMMIT")
    waits.append((got - start, time.perf_counter() - start))
    time.sleep(0.01)
print(json.dumps(waits))
"""


async def run_prune(copy: Path, running_id: str, synchronous: str) -> dict[str, Any]:
    from config import load_settings
    from durable.persistence import store_from_settings
    from durable.retention import RetentionPolicy, prune

    settings = load_settings(overrides={"database.url": str(copy),
                                        "database.synchronous": synchronous,
                                        "retention.max_age_days": PRUNE_AGE_DAYS})
    policy = RetentionPolicy.from_settings(settings.retention)
    conn = sqlite3.connect(copy)
    before = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("tasks", "task_states", "log_fragments")}
    conn.close()
    stop = Path(f"{copy}.stop")
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(copy), running_id, str(stop)],
                             stdout=subprocess.PIPE, text=True)
    assert probe.stdout is not None
    probe.stdout.readline()  # ready
    await asyncio.sleep(0.3)
    store: Any = store_from_settings(settings)
    await store.open()
    marks: list[float] = []
    events = trace_writer(store)
    try:
        start = time.perf_counter()
        report = await prune(store, policy, on_chunk=lambda _r: marks.append(time.perf_counter()))
        total = time.perf_counter() - start
    finally:
        await store.close()
        await asyncio.sleep(0.3)
        stop.touch()
        out, _ = probe.communicate(timeout=60)
        stop.unlink(missing_ok=True)
    waits = json.loads(out.splitlines()[-1])
    conn = sqlite3.connect(copy)
    after = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before}
    conn.close()
    gaps = [b - a for a, b in zip([start, *marks], marks, strict=False)]
    deleting = (marks[-1] - start) if marks else total
    return {"report": report, "total": total, "deleting": deleting, "before": before,
            "transactions": transactions(events),
            "after": after, "chunk_gaps": gaps, "probe_lock_waits": [w[0] for w in waits],
            "probe_totals": [w[1] for w in waits]}


STATEMENT_KINDS = (
    ("BEGIN", "BEGIN"),
    ("SELECT t.created_at FROM tasks", "keep_last cutoff"),
    ("SELECT t.id FROM tasks", "select aged tasks"),
    ("SELECT task_id, count(*)", "their output sizes"),
    ("DELETE FROM tasks", "DELETE tasks (+cascade)"),
    ("SELECT seq, length(data)", "select a task's oldest output"),
    ("DELETE FROM log_fragments", "DELETE fragments"),
    ("UPDATE log_fragments", "trim a fragment"),
    ("UPDATE tasks SET log_dropped", "update marker"),
    ("COMMIT", "COMMIT (+auto-checkpoint)"),
    ("PRAGMA", "PRAGMA"),
)


def trace_writer(store: Any) -> list[tuple[float, str]]:
    """Benchmark-only instrumentation of the store's writer thread: when each statement starts
    (sqlite3's trace callback on the writer's own connection) and when each transaction's
    ``apply_batch`` returns, so each chunk's time splits into its statements."""
    events: list[tuple[float, str]] = []
    store._conn.set_trace_callback(lambda sql: events.append((time.perf_counter(), sql[:40])))
    writer = store.writer
    inner = writer._apply_batch

    def timed(ops: Any) -> Any:
        try:
            return inner(ops)
        finally:
            events.append((time.perf_counter(), "<end>"))

    writer._apply_batch = timed
    return events


def transactions(events: list[tuple[float, str]]) -> list[dict[str, float]]:
    """Per write transaction: total seconds (BEGIN IMMEDIATE to apply_batch's return, about
    the write-lock hold plus the COMMIT's auto-checkpoint) and seconds per statement kind."""
    out: list[dict[str, float]] = []
    current: dict[str, float] | None = None
    begun = 0.0
    for (at, sql), (next_at, _) in zip(events, [*events[1:], (events[-1][0], "")],
                                       strict=True):
        if sql.startswith("BEGIN"):
            current, begun = {}, at
        if current is None:
            continue
        if sql == "<end>":
            current["total"], current["begin"], current["end"] = at - begun, begun, at
            out.append(current)
            current = None
            continue
        kind = next((label for prefix, label in STATEMENT_KINDS if sql.startswith(prefix)),
                    sql[:30])
        current[kind] = current.get(kind, 0.0) + (next_at - at)
    return out


def time_vacuum(copy: Path) -> tuple[float, str, int, int]:
    before = copy.stat().st_size
    start = time.perf_counter()
    proc = subprocess.run([ONESHOT, "--db", str(copy), "db", "vacuum"], capture_output=True,
                          text=True, check=False)
    return time.perf_counter() - start, proc.stderr.strip(), before, copy.stat().st_size


# -- report ---------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    return f"{median(values) * 1000:,.1f}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build the database anew")
    parser.add_argument("--db", type=Path, default=None, help="where the built database lives")
    parser.add_argument("--cli-reps", type=int, default=5, help="repetitions of each CLI call")
    parser.add_argument("--no-prune", action="store_true", help="skip the prune measurement")
    parser.add_argument("--prune-only", action="store_true", help="only the prune measurement")
    parser.add_argument("--prune-reps", type=int, default=None,
                        help="prune repetitions, each on a fresh copy (default 3, quick 1)")
    parser.add_argument("--no-vacuum", action="store_true", help="skip `db vacuum` after prune")
    args = parser.parse_args()
    scale = "quick" if args.quick else "full"
    size = SIZES[scale]
    reps = args.reps or (15 if args.quick else 50)
    db = args.db or Path(BENCH_DIR) / f"oneshot-bench-history-{scale}.db"
    transitions = size["tasks"] * size["transitions_per_task"]
    print(f"bench_history: {size['tasks']:,} tasks, {transitions:,} transitions, "
          f"{size['fragments']:,} fragments; {reps} calls per query; "
          f"{machine_summary()}")

    facts, built = ensure_database(db, size, args.rebuild)
    print(f"database {db}: {facts['db_bytes'] / 1e6:,.0f} MB, counts {facts['counts']}, "
          + (f"built in {facts['build_seconds']:.1f} s" if built else
             f"reused (built {time.ctime(facts['built_at'])}; --rebuild to rebuild)"))

    if not args.prune_only:
        measure_and_print(db, facts, reps, args.cli_reps)
    if args.no_prune:
        print(f"\nat the end: {load_summary()}")
        return
    measure_prune(db, facts, args.no_vacuum, args.prune_reps or (1 if args.quick else 3),
                  args.synchronous)
    print(f"\nat the end: {load_summary()}")


def measure_and_print(db: Path, facts: dict[str, Any], reps: int, cli_reps: int) -> None:
    results, statements = asyncio.run(measure_queries(db, facts, reps))
    checks = results.pop()["checks"]
    print(f"\n1. In-process query time, ms (median of {reps} calls; p95, max); checks: {checks}")
    rows = []
    for r in results:
        t = r["times"]
        target = ""
        if r["op"].startswith(("ls --state RUNNING", "show", "read_logs", "logs")):
            target = "MET" if median(t) * 1000 < QUERY_TARGET_MS else "MISSED"
        rows.append([r["op"], r["ids"], ms(t), f"{pct(t, 0.95) * 1000:,.1f}",
                     f"{max(t) * 1000:,.1f}", target])
    print_table(["query", "task", "median ms", "p95 ms", "max ms", "< 50 ms"], rows)
    print("\nEXPLAIN QUERY PLAN of each statement:")
    for label, lines in query_plans(db, statements).items():
        for line in lines:
            print(f"  {label:30} {line}")

    big_running = facts["running"][0]
    typical = facts["typical"][0]
    calls = [
        ("python -c pass (interpreter)", [sys.executable, "-c", "pass"]),
        ("oneshot --help (start-up floor)", [ONESHOT, "--help"]),
        ("oneshot ls --state RUNNING", [ONESHOT, "--db", str(db), "ls", "--state", "RUNNING"]),
        ("oneshot show ID (running, 10k fr.)", [ONESHOT, "--db", str(db), "show", big_running]),
        ("oneshot show ID (finished, 18 fr.)", [ONESHOT, "--db", str(db), "show", typical]),
        ("oneshot logs ID --tail 100 (running)",
         [ONESHOT, "--db", str(db), "logs", big_running, "--tail", "100"]),
        ("oneshot logs ID --tail 100 (finished)",
         [ONESHOT, "--db", str(db), "logs", typical, "--tail", "100"]),
    ]
    print(f"\n2. Whole CLI call, wall ms (median of {cli_reps} after a warm-up) [min-max]")
    rows, floor = [], 0.0
    for label, argv in calls:
        times, out = time_cli(argv, cli_reps)
        if "start-up floor" in label:
            floor = median(times)
        extra = f"{(median(times) - floor) * 1000:+,.0f}" if floor and "floor" not in label else ""
        rows.append([label, ms(times), f"{min(times) * 1000:,.0f}-{max(times) * 1000:,.0f}",
                     extra, f"{len(out.splitlines())} lines out"])
    print_table(["call", "median ms", "range", "over --help ms", "output"], rows)
    total, heaviest = import_profile()
    print(f"-X importtime of `import orchestrator.cli`: {total:,.0f} ms in all; by package "
          "(self time, ms): " + ", ".join(f"{name} {t:,.0f}" for name, t in heaviest))


def copy_database(db: Path, copy: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(db, copy)
    if Path(f"{db}-wal").exists():
        shutil.copyfile(f"{db}-wal", f"{copy}-wal")
    # The copy's pages are dirty in the page cache: write them out now, or the prune's first
    # checkpoint (an fsync of the database file) pays for the whole copy.
    for name in (copy, Path(f"{copy}-wal")):
        if name.exists():
            fd = os.open(name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def print_prune_rep(p: dict[str, Any]) -> dict[str, float]:
    """The details of one prune run; returns its headline figures."""
    report, before, after = p["report"], p["before"], p["after"]
    deleted = {t: before[t] - after[t] for t in before}
    total_rows = sum(deleted.values())
    gaps, waits = p["chunk_gaps"], p["probe_totals"]
    print_table(["table", "before", "after", "deleted"],
                [[t, f"{before[t]:,}", f"{after[t]:,}", f"{deleted[t]:,} "
                  f"({deleted[t] / before[t]:.0%})"] for t in before])
    print(f"prune(): {p['total']:.1f} s in all ({p['deleting']:.1f} s deleting), "
          f"{report.chunks} chunks ({report.tasks_deleted / max(report.chunks, 1):.0f} tasks "
          f"per chunk); {total_rows / p['deleting']:,.0f} rows/s "
          f"(tasks + cascaded transitions + fragments), "
          f"{deleted['log_fragments'] / p['deleting']:,.0f} fragments/s, "
          f"{report.bytes_freed / p['deleting'] / 1e6:,.0f} MB/s of output; space: "
          f"{report.space}")
    txs = [t for t in p["transactions"] if any(k.startswith("DELETE") for k in t)]
    totals = [t["total"] for t in txs] or [0.0]
    kinds: dict[str, float] = {}
    for t in txs:
        for kind, sec in t.items():
            if kind not in ("total", "begin", "end"):
                kinds[kind] = kinds.get(kind, 0.0) + sec
    print(f"deleting transactions (writer thread, trace callback): {len(txs)}, median "
          f"{ms(totals)} ms, p95 {pct(totals, 0.95) * 1000:.0f} ms, max "
          f"{max(totals) * 1000:.0f} ms, {sum(1 for x in totals if x >= 0.2)} >= 200 ms; "
          "time by statement: " + ", ".join(
              f"{k} {v:.1f} s" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    for t in sorted(txs, key=lambda t: -t["total"])[:3]:
        print(f"  slow transaction {t['total'] * 1000:.0f} ms: " + ", ".join(
            f"{k} {v * 1000:.0f}" for k, v in sorted(t.items(), key=lambda kv: -kv[1])
            if k not in ("total", "begin", "end")))
    idle = [b["begin"] - a["end"] for a, b in itertools.pairwise(txs)] or [0.0]
    print(f"writer idle between one chunk's commit and the next BEGIN: median "
          f"{median(idle) * 1000:.2f} ms, max {max(idle) * 1000:.1f} ms (the only windows in "
          "which another process can take the write lock)")
    print(f"chunk time (submit -> commit, prune's own longest_chunk): "
          f"{report.longest_chunk * 1000:.0f} ms; between chunk callbacks: median "
          f"{ms(gaps)} ms, p95 {pct(gaps, 0.95) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms")
    slow = sum(1 for w in waits if w * 1000 >= CHUNK_TARGET_MS)
    print(f"concurrent writer in another process ({len(waits)} writes while prune ran, one "
          f"every 10 ms when unblocked): BEGIN IMMEDIATE wait max "
          f"{max(p['probe_lock_waits']) * 1000:.0f} ms; whole write median {ms(waits)} ms, "
          f"p99 {pct(waits, 0.99) * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms, "
          f"{slow} writes >= {CHUNK_TARGET_MS:.0f} ms")
    return {"rows_per_s": total_rows / p["deleting"], "seconds": p["deleting"],
            "longest_tx_ms": max(totals) * 1000,
            "longest_chunk_ms": max(report.longest_chunk, max(gaps) if gaps else 0.0) * 1000,
            "probe_max_ms": max(waits) * 1000, "probe_slow": float(slow)}


def measure_prune(db: Path, facts: dict[str, Any], no_vacuum: bool, reps: int,
                  synchronous: str) -> None:
    probe = subprocess.run([ONESHOT, "prune", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        print("\n3. prune: `oneshot prune` does not exist in this tree; not measured")
        return
    copy = db.with_name(db.stem + "-prune-copy.db")
    print(f"\n3. Prune of tasks finished > {PRUNE_AGE_DAYS} days ago (synchronous {synchronous}, "
          "keep_last 100, "
          f"chunk_rows 500, chunk_bytes 32 MiB: the defaults), on a fresh copy each time, "
          f"{reps} repetitions")
    heads = []
    try:
        for rep in range(reps):
            copy_database(db, copy)
            print(f"-- rep {rep + 1}/{reps} ({load_summary()})")
            heads.append(print_prune_rep(asyncio.run(run_prune(copy, facts["running"][0],
                                                                synchronous))))
        if not no_vacuum:
            seconds, message, size_before, size_after = time_vacuum(copy)
            print(f"oneshot db vacuum on the pruned copy: {seconds:.1f} s (one exclusive "
                  f"rewrite), {size_before / 1e6:,.0f} MB -> {size_after / 1e6:,.0f} MB; "
                  f"{message}")
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)

    def col(key: str) -> list[float]:
        return [h[key] for h in heads]

    longest = col("longest_chunk_ms")
    print()
    print_table(["prune figure", "median [min-max]"], [
        ["rows deleted per second", spread(col("rows_per_s"))],
        ["seconds deleting", spread(col("seconds"), "{:.1f}")],
        ["longest chunk transaction (writer thread), ms", spread(col("longest_tx_ms"))],
        ["longest chunk, submit -> commit, ms", spread(longest)],
        ["concurrent writer's longest write, ms", spread(col("probe_max_ms"))],
        ["concurrent writes >= 200 ms", spread(col("probe_slow"))],
    ])
    print(f"longest write-lock hold per chunk: "
          f"{'MET' if median(longest) < CHUNK_TARGET_MS else 'MISSED'} (target < "
          f"{CHUNK_TARGET_MS:.0f} ms; median of the per-run maxima {median(longest):.0f} ms, "
          f"worst {max(longest):.0f} ms); another process's writes waited up to "
          f"{max(col('probe_max_ms')):.0f} ms")


if __name__ == "__main__":
    main()
