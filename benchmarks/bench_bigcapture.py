"""Capture of a 1 GB output: the child's speed, ingestion throughput and lag, RSS, loop stalls.

    .venv/bin/python benchmarks/bench_bigcapture.py [--quick] [--size 1G] [--reps 3]
                                                    [--synchronous FULL] [--loop-debug]

The child is a small Python program (``CHILD`` below) that writes SIZE bytes of 100-byte lines
(like ``yes``) to its stdout in 64 KiB ``os.write`` calls, timing itself: at the end it prints
on stderr its start and end epoch times, its elapsed time, its CPU time and the time it spent
runnable but waiting for a CPU (``/proc/self/schedstat``). So its interpreter start-up is not in
the figure, and the same line tells when the last byte was written.

Each repetition runs three sides, each in a fresh subprocess (the oneshot side alternates
between going first and last):

* oneshot: ``AsyncOrchestrator.run([python, -c, CHILD, SIZE])`` with persistence on (default
  log settings: 1 MiB batches, 0.2 s flush interval, 16 MiB memory cap). The child runs under
  the shim and writes straight to its spool file; the orchestrator tails the spool into
  ``log_fragments``. ``store.append_logs`` is wrapped (in this script) to record when each
  batch was committed and its size. A ticker task in the same event loop sleeps 5 ms at a time
  and records how late it wakes: the longest event-loop stall.
* plain: the same child with stdout redirected to a file in the same scratch directory (what
  ``sh -c 'CHILD > file'`` does), with the same ticker in an otherwise idle loop: the noise
  floor of lateness on this machine at this moment.
* raw: that file read back in 1 MiB fragments, each one ``INSERT`` into ``log_fragments``
  (Oneshot's schema) and one ``COMMIT``, bare ``sqlite3``, same synchronous level.

Figures: (a) child elapsed under Oneshot / in a plain file (target <= 1.1x); (b) ingestion
throughput, SIZE / (last batch committed - child started), vs raw (target >= 0.8x); (c) lag,
last batch committed - child's last write; (d) peak RSS of the orchestrator process
(ru_maxrss, target < 150 MB); (e) longest ticker lateness (target < 50 ms). ``--loop-debug``
adds asyncio debug mode in the oneshot side and lists callbacks slower than 20 ms (slows it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    base_parser,
    create_schema,
    load_summary,
    machine_summary,
    median,
    print_table,
    raw_connect,
    remove_db,
    scratch_dir,
    spread,
    verdict,
)

FRAGMENT = 1 << 20
MIB = float(1 << 20)
TICK = 0.005
RSS_TARGET_MB = 150.0
STALL_TARGET_MS = 50.0
CHILD = r"""
import os, sys, time
size = int(sys.argv[1])
def waited():  # ns this process spent runnable but waiting for a CPU (/proc schedstat)
    with open("/proc/self/schedstat") as f:
        return int(f.read().split()[1])
start, t0, c0, w0 = time.time(), time.perf_counter(), time.process_time(), waited()
block = (b"y" * 99 + b"\n") * 655  # 65,500 bytes of 100-byte lines
left = size
while left:
    view = memoryview(block)[:min(left, len(block))]
    while view:
        n = os.write(1, view)
        view = view[n:]
        left -= n
elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
runq = (waited() - w0) / 1e9
sys.stderr.write(f"CHILD {start:.6f} {time.time():.6f} {elapsed:.6f} {cpu:.6f} {runq:.6f}\n")
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def child_argv(size: int) -> list[str]:
    return [sys.executable, "-S", "-c", CHILD, str(size)]


def parse_child_line(text: str) -> dict[str, float]:
    for line in text.splitlines():
        if line.startswith("CHILD "):
            start, end, elapsed, cpu, runq = (float(x) for x in line.split()[1:6])
            return {"child_start": start, "child_end": end, "child_elapsed": elapsed,
                    "child_cpu": cpu, "child_runq": runq}
    raise RuntimeError(f"no CHILD line in the child's stderr: {text[-500:]!r}")


def peak_rss() -> dict[str, float]:
    hwm = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "vmhwm_mb": hwm}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Ticker:
    """Sleeps TICK at a time in the loop it runs in; records how late each wake-up is."""

    def __init__(self) -> None:
        self.max_late = 0.0
        self.late: list[float] = []
        self.worst: list[tuple[float, float]] = []  # (lateness, epoch time of the wake-up)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + TICK
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            late = now - due
            self.late.append(late)
            if late > 0.010:
                self.worst.append((late, time.time()))
            self.max_late = max(self.max_late, late)
            due = now + TICK

    def summary(self, since: float, until: float) -> dict[str, Any]:
        ordered = sorted(self.late)
        worst = sorted(self.worst, reverse=True)[:5]
        return {"ticks": len(ordered), "max_late_ms": self.max_late * 1000,
                "p99_late_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000 if ordered else 0,
                "over_target": sum(1 for x in ordered if x * 1000 >= STALL_TARGET_MS),
                "worst": [(round(late * 1000, 1), round(at - since, 3), round(at - until, 3))
                          for late, at in worst]}


class SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        name = re.search(r"name='([^']*)'", text)
        where = re.search(r"running at (\S+)", text)
        took = re.search(r"took (\S+) seconds", text)
        self.messages.append(f"{time.time():.3f} {took.group(1) if took else '?'} s: "
                             f"{name.group(1) if name else text[:80]} at "
                             f"{where.group(1) if where else '?'}")


async def child_oneshot(db: Path, size: int, synchronous: str, loop_debug: bool
                        ) -> dict[str, Any]:
    from config import load_settings
    from durable.records import Stream
    from orchestrator import AsyncOrchestrator

    slow = SlowCallbacks()
    if loop_debug:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 0.020
        logging.getLogger("asyncio").addHandler(slow)
    settings = load_settings(overrides={"database.url": str(db),
                                        "database.synchronous": synchronous})
    commits: list[tuple[float, int, int]] = []  # (committed at, bytes, fragments)
    async with AsyncOrchestrator(settings) as orch:
        store: Any = orch.store
        original = store.append_logs

        async def append_logs(fragments: Any, *, offsets: Any = None) -> None:
            await original(fragments, offsets=offsets)
            commits.append((time.time(), sum(len(f.data) for f in fragments), len(fragments)))

        store.append_logs = append_logs
        rss_before = peak_rss()["vmhwm_mb"]
        ticker = Ticker()
        ticking = asyncio.create_task(ticker.run())
        await asyncio.sleep(0.05)
        cpu0, submitted = cpu_seconds(), time.time()
        result = await orch.run(child_argv(size))
        finished = time.time()
        cpu = cpu_seconds() - cpu0
        ticking.cancel()
        fragments, stored = await store.log_size(result.id)
        err = b"".join(f.data for f in await store.read_logs(result.id, streams=[Stream.STDERR]))
    child = parse_child_line(err.decode())
    stdout_bytes = stored - len(err)
    data_commits = [c for c in commits if c[1]]
    last_commit = max(c[0] for c in data_commits)
    return {"side": "oneshot", "state": result.state.value, "stored": stdout_bytes,
            "fragments": fragments, "commits": len(data_commits),
            "fragments_per_commit": median([c[2] for c in data_commits]),
            "mib_per_commit": median([c[1] / MIB for c in data_commits]),
            "submitted": submitted, "finished": finished, "last_commit": last_commit,
            "cpu_s": cpu, "rss_before_mb": rss_before, **peak_rss(), **child,
            "ticker": ticker.summary(submitted, child["child_end"]),
            "slow_callbacks": slow.messages[:20]}


async def child_plain(out: Path, size: int) -> dict[str, Any]:
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.05)
    started = time.time()
    with open(out, "wb") as sink:
        proc = await asyncio.create_subprocess_exec(*child_argv(size), stdout=sink,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
    ticking.cancel()
    child = parse_child_line(err.decode())
    return {"side": "plain", "stored": out.stat().st_size, **child,
            "ticker": ticker.summary(started, child["child_end"])}


def insert_file(db: Path, source: Path, synchronous: str) -> dict[str, Any]:
    conn = raw_connect(db, synchronous)  # the parent created the schema
    task_id, now = uuid.uuid4().hex, time.time()
    conn.execute("INSERT INTO tasks (id, kind, argv, queue, state, created_at, updated_at, "
                 "attempt) VALUES (?, 'command', '[]', 'default', 'RUNNING', ?, ?, 1)",
                 (task_id, now, now))
    cur = conn.cursor()
    seq = 0
    start = time.perf_counter()
    with open(source, "rb", buffering=0) as f:
        while data := f.read(FRAGMENT):
            cur.execute("BEGIN IMMEDIATE")
            cur.execute("INSERT INTO log_fragments (task_id, seq, stream, at, data) "
                        "VALUES (?, ?, 1, ?, ?)", (task_id, seq, time.time(), data))
            cur.execute("COMMIT")
            seq += 1
    wall = time.perf_counter() - start
    stored = conn.execute("SELECT coalesce(sum(length(data)), 0) FROM log_fragments "
                          "WHERE task_id = ?", (task_id,)).fetchone()[0]
    conn.close()
    return {"stored": stored, "fragments": seq, "wall": wall}


async def child_raw(db: Path, source: Path, synchronous: str) -> dict[str, Any]:
    """The bare insert on a worker thread, while this loop runs the ticker: the stall noise
    floor of a process whose other thread commits the same bytes."""
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.05)
    started = time.time()
    result = await asyncio.to_thread(insert_file, db, source, synchronous)
    ticking.cancel()
    return {"side": "raw", **result, **peak_rss(), "ticker": ticker.summary(started, started)}


def run_child(args: list[str]) -> dict[str, Any]:
    argv = [sys.executable, __file__, *args]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def one_rep(workdir: Path, rep: int, size: int, synchronous: str, loop_debug: bool
            ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    plain_file = workdir / "plain.out"
    raw_db = workdir / "raw.db"
    oneshot_db = workdir / "oneshot.db"
    common = ["--size", str(size), "--synchronous", synchronous]

    def oneshot() -> None:
        extra = ["--loop-debug"] if loop_debug else []
        out["oneshot"] = run_child(["--child", "oneshot", "--db", str(oneshot_db), *common,
                                    *extra])
        out["oneshot"]["db_mb"] = oneshot_db.stat().st_size / MIB
        remove_db(oneshot_db)

    def plain_then_raw() -> None:
        out["plain"] = run_child(["--child", "plain", "--out", str(plain_file), *common])
        create_schema(raw_db)
        out["raw"] = run_child(["--child", "raw", "--db", str(raw_db), "--out",
                                str(plain_file), *common])
        remove_db(raw_db)
        plain_file.unlink(missing_ok=True)

    for step in ((oneshot, plain_then_raw) if rep % 2 == 0 else (plain_then_raw, oneshot)):
        step()
    for side in ("oneshot", "plain", "raw"):
        if out[side]["stored"] != size:
            raise RuntimeError(f"{side}: stored {out[side]['stored']} bytes of {size}")
    if out["oneshot"]["state"] != "COMPLETED":
        raise RuntimeError(f"oneshot: the task ended {out['oneshot']['state']}")
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="bytes of output (K/M/G suffixes, binary)")
    parser.add_argument("--loop-debug", action="store_true",
                        help="asyncio debug mode in the oneshot side: list slow callbacks")
    parser.add_argument("--child", choices=("oneshot", "plain", "raw"),
                        help=argparse_hidden())
    parser.add_argument("--db", help=argparse_hidden())
    parser.add_argument("--out", help=argparse_hidden())
    args = parser.parse_args()
    size = parse_size(args.size or ("200M" if args.quick else "1G"))
    if args.child == "oneshot":
        result = asyncio.run(child_oneshot(Path(args.db), size, args.synchronous,
                                           args.loop_debug))
    elif args.child == "plain":
        result = asyncio.run(child_plain(Path(args.out), size))
    elif args.child == "raw":
        result = asyncio.run(child_raw(Path(args.db), Path(args.out), args.synchronous))
    if args.child:
        print(json.dumps(result))
        return

    reps = args.reps or (2 if args.quick else 3)
    print(f"bench_bigcapture: {size:,} bytes ({size / MIB:,.0f} MiB) of 100-byte lines from a "
          f"self-timing Python child, synchronous={args.synchronous}, {reps} repetitions; "
          f"{machine_summary()}")
    runs: list[dict[str, dict[str, Any]]] = []
    with scratch_dir("bigcapture") as workdir:
        for rep in range(reps):
            r = one_rep(workdir, rep, size, args.synchronous, args.loop_debug)
            runs.append(r)
            o, p, w = r["oneshot"], r["plain"], r["raw"]
            ingest = size / MIB / (o["last_commit"] - o["child_start"])
            print(f"  rep {rep + 1}/{reps}: child {o['child_elapsed']:.2f} s under oneshot vs "
                  f"{p['child_elapsed']:.2f} s plain; ingestion {ingest:,.0f} MiB/s vs raw "
                  f"{size / MIB / w['wall']:,.0f} MiB/s; lag "
                  f"{o['last_commit'] - o['child_end']:.2f} s; RSS {o['ru_maxrss_mb']:.0f} MB; "
                  f"stall {o['ticker']['max_late_ms']:.1f} ms (raw side "
                  f"{w['ticker']['max_late_ms']:.1f} ms); {load_summary()}", flush=True)

    def col(side: str, fn: Any) -> list[float]:
        return [fn(r[side]) for r in runs]

    child_ratio = [r["oneshot"]["child_elapsed"] / r["plain"]["child_elapsed"] for r in runs]
    ingest = col("oneshot", lambda o: size / MIB / (o["last_commit"] - o["child_start"]))
    ingest_submit = col("oneshot", lambda o: size / MIB / (o["last_commit"] - o["submitted"]))
    raw = col("raw", lambda w: size / MIB / w["wall"])
    ingest_ratio = [a / b for a, b in zip(ingest, raw, strict=True)]
    lag = col("oneshot", lambda o: o["last_commit"] - o["child_end"])
    rss = col("oneshot", lambda o: o["ru_maxrss_mb"])
    stall = col("oneshot", lambda o: o["ticker"]["max_late_ms"])
    floor = col("plain", lambda p: p["ticker"]["max_late_ms"])
    raw_floor = col("raw", lambda w: w["ticker"]["max_late_ms"])
    o_last = runs[-1]["oneshot"]
    print()
    print_table(["figure", "median [min-max]", "target", "verdict"], [
        ["(a) child elapsed under oneshot, s", spread(col("oneshot", lambda o: o["child_elapsed"]),
                                                     "{:.2f}"), "", ""],
        ["(a) child elapsed, plain file, s", spread(col("plain", lambda p: p["child_elapsed"]),
                                                    "{:.2f}"), "", ""],
        ["(a) child CPU s / waiting for a CPU s, oneshot",
         f"{median(col('oneshot', lambda o: o['child_cpu'])):.2f} / "
         f"{median(col('oneshot', lambda o: o['child_runq'])):.2f}", "", "schedstat"],
        ["(a) child CPU s / waiting for a CPU s, plain",
         f"{median(col('plain', lambda p: p['child_cpu'])):.2f} / "
         f"{median(col('plain', lambda p: p['child_runq'])):.2f}", "", "schedstat"],
        ["(a) ratio oneshot / plain", spread(child_ratio, "{:.2f}"), "<= 1.1x",
         verdict(median(child_ratio), 1.1, at_least=False)],
        ["(b) ingestion MiB/s (from child start)", spread(ingest), "", ""],
        ["(b) ingestion MiB/s (from submit)", spread(ingest_submit), "", ""],
        ["(b) raw sqlite3 insert MiB/s", spread(raw), "", ""],
        ["(b) ratio oneshot / raw", spread(ingest_ratio, "{:.2f}"), ">= 0.8x",
         verdict(median(ingest_ratio), 0.8, at_least=True)],
        ["(c) lag: last commit - child end, s", spread(lag, "{:.2f}"), "reported", ""],
        ["(d) orchestrator peak RSS (ru_maxrss), MB", spread(rss), "< 150 MB",
         f"{'MET' if max(rss) < RSS_TARGET_MB else 'MISSED'} (worst {max(rss):.0f} MB)"],
        ["(e) longest loop stall, ms", spread(stall, "{:.1f}"), "< 50 ms",
         f"{'MET' if max(stall) < STALL_TARGET_MS else 'MISSED'} (worst {max(stall):.1f} ms)"],
        ["(e) same ticker, raw side (inserts on a thread)", spread(raw_floor, "{:.1f}"), "",
         "noise floor"],
        ["(e) same ticker, plain side (idle loop)", spread(floor, "{:.1f}"), "", "noise floor"],
    ])
    print(f"\noneshot details (last rep): {o_last['commits']} batch commits, median "
          f"{o_last['fragments_per_commit']:.0f} fragments / {o_last['mib_per_commit']:.1f} MiB "
          f"per commit, {o_last['fragments']} fragments; orchestrator CPU "
          f"{o_last['cpu_s']:.1f} s; peak RSS before run {o_last['rss_before_mb']:.0f} MB; "
          f"db {o_last['db_mb']:,.0f} MiB; ticker {o_last['ticker']['ticks']} ticks, p99 "
          f"{o_last['ticker']['p99_late_ms']:.1f} ms")
    for i, r in enumerate(runs):
        print(f"  rep {i + 1} worst stalls (ms, s after submit, s after child end): "
              f"{r['oneshot']['ticker']['worst']}; raw side: {r['raw']['ticker']['worst'][:3]}")
        for message in r["oneshot"]["slow_callbacks"]:
            print(f"    slow callback: {message}")
    print(f"at the end: {load_summary()}")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
