"""Crash simulation: the command finishes while no orchestrator is running.

`oneshot run` is SIGKILLed while its command runs. The command goes on under its shim, prints
its last line and exits with code 5 while nobody watches; the shim writes the exit status to
``exit.json`` in the task's spool directory. `oneshot recover` later finds that file, stores the
rest of the output and records the real exit code: the task is settled, never re-run.

Run: python examples/crash_simulation/child_dies_while_down.py   (exit 0: the demonstration holds)
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

from _sim import TIMEOUT, Demo, oneshot, read_until, run

TASK = "echo ran >> ran; echo working; sleep 1; echo done; exit 5"


def demonstrate(demo: Demo) -> int:
    print("1. `oneshot run` a command that prints, works 1 s more, prints again and exits 5")
    with open(demo.root / "run.err", "wb") as err:
        run = subprocess.Popen([oneshot(), "run", "--", "sh", "-c", TASK],
                               env=demo.env, cwd=demo.root, stdout=subprocess.PIPE, stderr=err)
    try:
        read_until(run, b"working\n")
        print("2. SIGKILL the orchestrator while the command works")
        run.send_signal(signal.SIGKILL)
        run.wait(TIMEOUT)
    finally:
        run.kill()
        run.wait(TIMEOUT)
        assert run.stdout is not None
        run.stdout.close()
    found = re.search(rb"oneshot: task ([0-9a-f]{32})", (demo.root / "run.err").read_bytes())
    if found is None:
        print("  FAIL  `oneshot run` printed no task id")
        return 1
    task_id = found.group(1).decode()

    exit_file = demo.root / "demo.db-runs" / task_id / "1" / "exit.json"
    print(f"3. wait for the shim's status file {exit_file.relative_to(demo.root)}")
    deadline = time.monotonic() + TIMEOUT
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not exit_file.exists():
        print("  FAIL  the shim wrote no exit.json")
        return 1
    status = json.loads(exit_file.read_text())
    print(f"   exit.json: {json.dumps({k: status[k] for k in ('exit_code', 'reason')})}")
    demo.check(status["exit_code"] == 5, "the shim recorded the command's exit code 5")
    demo.check(demo.show(task_id)["state"] == "RUNNING",
               "the database still says RUNNING: the command ended while nobody watched")

    print("4. `oneshot recover` reads the status file instead of guessing")
    recover = demo.cli("recover")
    print("   " + recover.stderr.decode().strip().replace("\n", "\n   "))
    demo.check(recover.returncode == 0, "recover exits 0")
    task = demo.show(task_id)
    for t in task["transitions"]:
        print(f"     {t['from_state'] or '-':>10} -> {t['to_state']:<11} {t['reason'] or ''}")
    demo.check((task["state"], task["exit_code"]) == ("FAILED", 5),
               f"ended {task['state']} with exit code {task['exit_code']} (expected 5)")
    demo.check(task["attempt"] == 1 and (demo.root / "ran").read_text().count("ran") == 1,
               "the command ran once: a finished task is never re-run")
    out = demo.cli("logs", task_id, "--raw").stdout
    demo.check(out == b"working\ndone\n", f"stored output is complete: {out!r}")
    print("holds" if demo.failures == 0 else f"{demo.failures} checks failed")
    return 0 if demo.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(run(demonstrate))
