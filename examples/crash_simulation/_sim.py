"""Shared helpers of the crash-simulation scripts in this directory (not a script itself).

It holds what every demonstration needs: the limits (``TIMEOUT``) and the environment token
(``TOKEN``) that marks the processes a demonstration starts; ``oneshot()``, the `oneshot`
command to run (the one beside the running Python, else the one on ``PATH``); ``Demo``, a
temporary database's environment with the CLI calls and the printed checks; ``read_until``,
``kill_leftovers``, ``start_time`` and ``kill_verified`` for driving and killing processes; and
``run``, which runs a demonstration in a fresh temporary directory and cleans up after it.

The scripts import it as ``from _sim import ...``: run as ``python examples/crash_simulation/x.py``,
a script's own directory comes first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TIMEOUT = 20.0
TOKEN = f"ONESHOT_DEMO_TOKEN={uuid.uuid4().hex}"


def oneshot() -> str:
    beside = Path(sys.executable).parent / "oneshot"
    found = str(beside) if beside.exists() else shutil.which("oneshot")
    if not found:
        sys.exit("the `oneshot` command is not installed (pip install -e .)")
    return found


class Demo:
    def __init__(self, root: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
        self.env["ONESHOT_DATABASE__URL"] = str(root / "demo.db")
        self.env["ONESHOT_DEMO_TOKEN"] = TOKEN.partition("=")[2]
        self.root = root
        self.failures = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([oneshot(), *args], env=self.env, cwd=self.root,
                              capture_output=True, timeout=TIMEOUT, check=False)

    def show(self, task_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cli("show", task_id, "--json").stdout)
        return data

    def check(self, holds: bool, what: str) -> None:
        print(f"  {'ok  ' if holds else 'FAIL'}  {what}")
        self.failures += not holds


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """What the process printed on stdout until ``marker`` (bounded by TIMEOUT)."""
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + TIMEOUT
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise TimeoutError(f"no {marker!r} from {proc.args}")
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"{proc.args} ended before printing {marker!r}")
        seen += chunk
    return seen


def kill_leftovers() -> None:
    """Kill whatever this demo started that still runs (found by its environment token)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and TOKEN.encode() in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rpartition(b")")[2].split()[19])


def kill_verified(pid: int, recorded_start: int) -> bool:
    """SIGKILL ``pid`` only if it is still the process that started at ``recorded_start``."""
    try:
        pidfd = os.pidfd_open(pid)  # pins the process: its pid cannot be reused meanwhile
    except OSError:
        return False
    try:
        if start_time(pid) != recorded_start:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    finally:
        os.close(pidfd)


def run(demonstrate: Callable[[Demo], int]) -> int:
    """Run ``demonstrate`` against a fresh temporary database; kill its leftovers after it."""
    with tempfile.TemporaryDirectory(prefix="oneshot-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            return demonstrate(demo)
        finally:
            kill_leftovers()
