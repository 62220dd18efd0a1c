"""Log capture throughput: one command printing --size bytes, stored by Oneshot vs bare sqlite3.

    .venv/bin/python benchmarks/bench_capture.py [--quick] [--size 500M] [--synchronous FULL]

The command is ``yes <99 chars> | head -c SIZE`` (100-byte lines, incompressible enough; SQLite
does not compress anyway). Each side runs in a fresh subprocess, so its peak RSS (ru_maxrss /
VmHWM) is that of the capture alone; sides alternate which goes first:

* oneshot: ``AsyncOrchestrator.run`` with persistence on (default log settings: 1 MiB batches,
  0.2 s flush interval, 16 MiB memory cap), timed from submit to result; then the stored byte
  count is checked against SIZE;
* raw: ``subprocess.Popen`` + ``os.read`` of the pipe, 1 MiB fragments, one ``INSERT`` into
  ``log_fragments`` (Oneshot's schema) and one COMMIT per fragment, same synchronous level,
  all on one thread (reading stops while a fragment commits);
* raw-threaded (for reference): the same, with the commits on a second thread fed by a
  16-deep queue, so reading overlaps committing as it does in Oneshot.

Targets: oneshot/raw throughput >= 0.8x; oneshot peak RSS < 150 MB.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import resource
import subprocess
import sys
import threading
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
LINE = "x" * 99  # `yes` adds the newline: 100-byte lines
MIB = float(1 << 20)
RSS_TARGET_MB = 150.0
SIDES = ("oneshot", "raw", "raw-threaded")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def command(size: int) -> list[str]:
    return ["sh", "-c", f"yes {LINE} | head -c {size}"]


def peak_rss() -> dict[str, float]:
    """This process's peak resident set in MB (ru_maxrss is in KiB on Linux)."""
    hwm = 0.0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "vmhwm_mb": hwm}


async def child_oneshot(db: Path, size: int, synchronous: str) -> dict[str, Any]:
    from config import load_settings
    from orchestrator import AsyncOrchestrator

    settings = load_settings(overrides={"database.url": str(db),
                                        "database.synchronous": synchronous})
    async with AsyncOrchestrator(settings) as orch:
        rss_before = peak_rss()["vmhwm_mb"]
        start = time.perf_counter()
        result = await orch.run(command(size))
        wall = time.perf_counter() - start
        fragments, stored = await orch.store.log_size(result.id)
    return {"wall": wall, "stored": stored, "fragments": fragments, "state": result.state.value,
            "rss_before_mb": rss_before, **peak_rss()}


def child_raw(db: Path, size: int, synchronous: str, threaded: bool) -> dict[str, Any]:
    conn = raw_connect(db, synchronous)  # the parent created the schema
    task_id, now = uuid.uuid4().hex, time.time()
    conn.execute("INSERT INTO tasks (id, kind, argv, queue, state, created_at, updated_at, "
                 "attempt) VALUES (?, 'command', ?, 'default', 'RUNNING', ?, ?, 1)",
                 (task_id, json.dumps(command(size)), now, now))
    rss_before = peak_rss()["vmhwm_mb"]
    cur = conn.cursor()
    seq = 0

    def store(data: bytes) -> None:
        nonlocal seq
        cur.execute("BEGIN IMMEDIATE")
        cur.execute("INSERT INTO log_fragments (task_id, seq, stream, at, data) "
                    "VALUES (?, ?, ?, ?, ?)", (task_id, seq, 1, time.time(), data))
        cur.execute("COMMIT")
        seq += 1

    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=16)  # threaded: 16 MiB cap

    errors: list[BaseException] = []

    def writer() -> None:
        while (data := pending.get()) is not None:
            if not errors:  # after a failure keep draining, so the reader never blocks
                try:
                    store(data)
                except BaseException as exc:
                    errors.append(exc)

    thread = threading.Thread(target=writer)
    emit = pending.put if threaded else store
    start = time.perf_counter()
    if threaded:
        thread.start()
    proc = subprocess.Popen(command(size), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd, buffer = proc.stdout.fileno(), bytearray()
    while chunk := os.read(fd, FRAGMENT):
        buffer += chunk
        if len(buffer) >= FRAGMENT:
            emit(bytes(buffer[:FRAGMENT]))
            del buffer[:FRAGMENT]
    if buffer:
        emit(bytes(buffer))
    proc.wait()
    if threaded:
        pending.put(None)
        thread.join()
        if errors:
            raise errors[0]
    wall = time.perf_counter() - start
    fragments, stored = conn.execute(
        "SELECT count(*), coalesce(sum(length(data)), 0) FROM log_fragments WHERE task_id = ?",
        (task_id,)).fetchone()
    conn.close()
    return {"wall": wall, "stored": stored, "fragments": fragments, "state": "COMPLETED",
            "rss_before_mb": rss_before, **peak_rss()}


def run_side(side: str, db: Path, size: int, synchronous: str) -> dict[str, Any]:
    if side != "oneshot":
        create_schema(db)
    argv = [sys.executable, __file__, "--child", side, "--db", str(db), "--size", str(size),
            "--synchronous", synchronous]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    result["db_mb"] = db.stat().st_size / MIB
    remove_db(db)
    if result["stored"] != size or result["state"] != "COMPLETED":
        raise RuntimeError(f"{side}: stored {result['stored']} bytes of {size} ({result})")
    return result


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", default=None, help="bytes of output (K/M/G suffixes, binary)")
    parser.add_argument("--child", choices=SIDES, help=argparse_hidden())
    parser.add_argument("--db", help=argparse_hidden())
    args = parser.parse_args()
    size = parse_size(args.size or ("100M" if args.quick else "500M"))
    if args.child:
        db = Path(args.db)
        if args.child == "oneshot":
            result = asyncio.run(child_oneshot(db, size, args.synchronous))
        else:
            result = child_raw(db, size, args.synchronous, threaded=args.child != "raw")
        print(json.dumps(result))
        return

    reps = args.reps or 3
    print(f"bench_capture: {size:,} bytes ({size / MIB:,.0f} MiB), synchronous="
          f"{args.synchronous}, {reps} repetitions; {machine_summary()}")
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with scratch_dir("capture") as workdir:
        for rep in range(reps):
            for side in SIDES if rep % 2 == 0 else reversed(SIDES):
                runs[side].append(run_side(side, workdir / f"{side}.db", size, args.synchronous))
            print(f"  rep {rep + 1}/{reps}: " + ", ".join(
                f"{side} {size / MIB / r[-1]['wall']:,.0f} MiB/s (peak RSS "
                f"{r[-1]['vmhwm_mb']:.0f} MB)" for side, r in runs.items()), flush=True)

    rows = []
    for side, results in runs.items():
        rows.append([side, spread([size / MIB / r["wall"] for r in results]),
                     spread([r["wall"] for r in results], "{:.2f}"),
                     f"{results[-1]['stored']:,} ({results[-1]['fragments']} fragments)",
                     f"{median([r['rss_before_mb'] for r in results]):.0f} -> "
                     f"{median([r['vmhwm_mb'] for r in results]):.0f}",
                     f"{median([r['db_mb'] for r in results]):,.0f}"])
    print()
    print_table(["side", "MiB/s median [min-max]", "wall s", "bytes stored (checked)",
                 "peak RSS MB before -> after run", "db MiB"], rows)
    ratios = {side: median([r["wall"] / o["wall"] for o, r in zip(runs["oneshot"], runs[side],
                                                                  strict=True)])
              for side in SIDES[1:]}
    rss = max(r["vmhwm_mb"] for r in runs["oneshot"])
    print("\nratio = median over repetitions of (oneshot MiB/s / baseline MiB/s)")
    print(f"throughput vs raw: {verdict(ratios['raw'], 0.8, at_least=True)}")
    print(f"throughput vs raw-threaded (reference): {ratios['raw-threaded']:.2f}x")
    print(f"peak RSS: {'MET' if rss < RSS_TARGET_MB else 'MISSED'} (target < "
          f"{RSS_TARGET_MB:.0f} MB, worst of {reps}: {rss:.0f} MB)")
    print(f"at the end: {load_summary()}")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
