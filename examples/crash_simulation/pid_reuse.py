"""Crash simulation: the recorded pid now belongs to an unrelated process (pid reuse).

After a crash the stored process handle names a pid, but pids are reused. Oneshot identifies a
process by (pid, start time) and pins it with a pidfd before signalling. Here the orchestrator
is SIGKILLed, the shim and its command are killed (through their verified identities), and the
handle and ``started.json`` are edited so their pid is that of a live, unrelated ``sleep``
whose start time differs. `oneshot recover` must neither adopt that process nor signal it: the
task is handled by the fallback (INTERRUPTED: its process vanished) and the ``sleep`` lives on.

Run: python examples/crash_simulation/pid_reuse.py   (exit 0: the demonstration holds)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
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


def kill_leftovers() -> None:
    """Kill whatever this demo started that still runs (found by its environment token)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and TOKEN.encode() in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            pass


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="oneshot-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            return demonstrate(demo)
        finally:
            kill_leftovers()


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


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"Z"
    except OSError:
        return True


def demonstrate(demo: Demo) -> int:
    db = demo.root / "demo.db"
    print("1. `oneshot run -- sleep 30`, then SIGKILL the orchestrator once the command runs")
    with open(demo.root / "run.err", "wb") as err:
        run = subprocess.Popen([oneshot(), "run", "--", "sleep", "30"], env=demo.env,
                               cwd=demo.root, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def task_id_printed() -> re.Match[bytes] | None:
            return re.search(rb"oneshot: task ([0-9a-f]{32})",
                             (demo.root / "run.err").read_bytes())
        wait_until(task_id_printed, "the task id")
        match = task_id_printed()
        assert match is not None
        task_id = match.group(1).decode()

        def handle() -> tuple[str] | None:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                row: tuple[str] | None = conn.execute(
                    "SELECT run_dir FROM process_handles WHERE task_id = ?", (task_id,)
                ).fetchone()
            return row
        wait_until(handle, "the process handle")
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(TIMEOUT)
    row = handle()
    assert row is not None
    started_file = Path(row[0]) / "started.json"
    started = json.loads(started_file.read_text())
    print(f"   shim pid {started['shim_pid']} (start {started['shim_start']}), "
          f"command pid {started['pid']} (start {started['pid_start']})")

    print("2. kill the shim, then the command, each after verifying its start time")
    demo.check(kill_verified(started["shim_pid"], started["shim_start"]), "shim killed")
    wait_until(lambda: gone(started["shim_pid"]), "the shim to die")
    demo.check(kill_verified(started["pid"], started["pid_start"]), "command killed")
    wait_until(lambda: gone(started["pid"]), "the command to die")

    decoy = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        wait_until(lambda: start_time(decoy.pid) is not None, "the decoy")
        print(f"3. an unrelated `sleep 60` runs as pid {decoy.pid} "
              f"(start {start_time(decoy.pid)}); point the stored handle and started.json "
              "at it, keeping the recorded start times")
        started.update(shim_pid=decoy.pid, pid=decoy.pid, pgid=decoy.pid)
        started_file.write_text(json.dumps(started))
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("UPDATE process_handles SET shim_pid = ?, pid = ?, pgid = ? "
                         "WHERE task_id = ?", (decoy.pid, decoy.pid, decoy.pid, task_id))
        demo.check(start_time(decoy.pid) not in (started["shim_start"], started["pid_start"]),
                   "the live pid's start time differs from the recorded one")

        print("4. `oneshot recover`")
        recover = demo.cli("recover")
        print("   " + recover.stderr.decode().strip().replace("\n", "\n   "))
        demo.check(recover.returncode == 0, "recover exits 0")
        time.sleep(0.2)
        demo.check(decoy.poll() is None and not gone(decoy.pid),
                   f"the unrelated pid {decoy.pid} was not signalled: it still runs")
        task = demo.show(task_id)
        for t in task["transitions"]:
            print(f"     {t['from_state'] or '-':>10} -> {t['to_state']:<11} {t['reason'] or ''}")
        demo.check(not any("reattached" in (t["reason"] or "") for t in task["transitions"]),
                   "it was not adopted (no reattach)")
        demo.check(task["state"] == "INTERRUPTED" and "vanished" in (task["error"] or ""),
                   f"fallback applied: {task['state']} ({task['error']})")
    finally:
        decoy.kill()
        decoy.wait(TIMEOUT)
    print("holds" if demo.failures == 0 else f"{demo.failures} checks failed")
    return 0 if demo.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
