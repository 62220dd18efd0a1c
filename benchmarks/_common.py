"""Helpers shared by the benchmark scripts: scratch directories, the raw SQLite baseline's
connection and schema, medians, and a plain-text table.

Benchmarks are measurement scripts, not tests: they print figures and ratios measured side by
side in one run and never assert on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# Scratch databases go on the real disk (not tmpfs); override with ONESHOT_BENCH_DIR.
BENCH_DIR = os.environ.get("ONESHOT_BENCH_DIR", tempfile.gettempdir())
SYNCHRONOUS_CHOICES = ("OFF", "NORMAL", "FULL", "EXTRA")


@contextlib.contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"oneshot-bench-{name}-", dir=BENCH_DIR))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_db(path: Path) -> None:
    """A database file, its WAL, and the shim spool directory Oneshot keeps beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{path}-runs", ignore_errors=True)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default: per script)")
    parser.add_argument("--synchronous", default="FULL", choices=SYNCHRONOUS_CHOICES,
                        type=str.upper, help="SQLite synchronous level for both sides")
    return parser


def machine_summary(path: str = BENCH_DIR) -> str:
    try:
        df = subprocess.run(["df", "-T", path], capture_output=True, text=True, check=True)
        device, fstype = df.stdout.splitlines()[-1].split()[:2]
        disk = f"{path} on {device} ({fstype})"
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        disk = path
    return (f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}, {platform.machine()}, scratch {disk}, "
            f"{load_summary()}")


def load_summary() -> str:
    """Load average and fdatasync latency now: the machine and its disk are shared, so say
    how busy they were when the figures were taken."""
    return f"load average {os.getloadavg()[0]:.2f}, fdatasync p50 {fsync_probe():.3f} ms"


def fsync_probe(count: int = 100) -> float:
    """Median milliseconds of a 4 KiB append + fdatasync in the scratch directory."""
    fd, name = tempfile.mkstemp(prefix="oneshot-bench-fsync-", dir=BENCH_DIR)
    times = []
    try:
        block = b"x" * 4096
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(name)
    return median(times) * 1000


def raw_connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """The baseline: a bare sqlite3 connection with the pragmas Oneshot's writer uses."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("PRAGMA busy_timeout = 5000", "PRAGMA journal_mode = WAL",
                   f"PRAGMA synchronous = {synchronous}", "PRAGMA foreign_keys = ON"):
        conn.execute(pragma)
    return conn


def create_schema(path: Path) -> None:
    """Oneshot's tables and indexes (from its metadata) in a fresh file, for the baseline."""
    from sqlalchemy import create_engine

    from durable.schema import metadata

    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        metadata.create_all(conn)
    engine.dispose()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def verdict(ratio: float, target: float, *, at_least: bool) -> str:
    met = ratio >= target if at_least else ratio <= target
    sign = ">=" if at_least else "<="
    return f"{'MET' if met else 'MISSED'} (target {sign} {target:g}x, measured {ratio:.2f}x)"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for line in (headers, ["-" * w for w in widths], *rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)))
