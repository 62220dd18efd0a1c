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
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _sim import TIMEOUT, Demo, kill_verified, oneshot, run, start_time


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
    sys.exit(run(demonstrate))
