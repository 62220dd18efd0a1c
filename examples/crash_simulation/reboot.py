"""Crash simulation: a reboot, detected by a changed boot id, and the three fallback modes.

The shim records the kernel boot id in ``started.json``; a pid recorded before a reboot means
nothing after it. The reboot is simulated: the commands' shims write the boot id of the file
named by ``ONESHOT_BOOT_ID_FILE``; the orchestrators, shims and commands are killed (what a
reboot does), and `oneshot recover` runs with ``ONESHOT_BOOT_ID_FILE`` naming a file with a
different id. Each task is lost and gets the fallback chosen by its ``--on-lost``:
``interrupt`` (INTERRUPTED with the cause, the default), ``restart`` (run again, as attempt 2)
or ``fail`` (FAILED). Tasks without ``--on-lost`` follow ONESHOT_RECOVERY__MISSING_PROCESS.

Run: python examples/crash_simulation/reboot.py   (exit 0: the demonstration holds)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _sim import TIMEOUT, Demo, kill_verified, oneshot, read_until, run


def command(root: Path, mode: str) -> list[str]:
    """Sleeps on its first run; on a second run prints and exits 0 at once."""
    marker = root / f"{mode}.ran"
    return ["sh", "-c", f"if [ -e {marker} ]; then echo second run; exit 0; fi; "
                        f"touch {marker}; echo first run; exec sleep 30"]


def demonstrate(demo: Demo) -> int:
    before, after = demo.root / "boot_id.before", demo.root / "boot_id.after"
    before.write_text(f"{uuid.uuid4()}\n")
    after.write_text(f"{uuid.uuid4()}\n")
    demo.cli("db", "upgrade")  # create the database before three processes open it at once
    modes = ("interrupt", "restart", "fail")
    print(f"1. three `oneshot run --on-lost MODE` tasks, boot id {before.read_text().strip()}")
    runs = {}
    for mode in modes:
        with open(demo.root / f"{mode}.err", "wb") as err:
            runs[mode] = subprocess.Popen(
                [oneshot(), "run", "--on-lost", mode, "--", *command(demo.root, mode)],
                env={**demo.env, "ONESHOT_BOOT_ID_FILE": str(before)}, cwd=demo.root,
                stdout=subprocess.PIPE, stderr=err)
    ids = {}
    try:
        for mode, run in runs.items():
            read_until(run, b"first run\n")
            found = re.search(rb"oneshot: task ([0-9a-f]{32})",
                              (demo.root / f"{mode}.err").read_bytes())
            assert found is not None, "`oneshot run` printed no task id"
            ids[mode] = found.group(1).decode()
    finally:
        print("2. \"reboot\": SIGKILL the orchestrators, their shims and their commands")
        for run in runs.values():
            run.kill()
            run.wait(TIMEOUT)
            assert run.stdout is not None
            run.stdout.close()
    for mode, task_id in ids.items():
        started_file = demo.root / "demo.db-runs" / task_id / "1" / "started.json"
        deadline = time.monotonic() + TIMEOUT
        while not started_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = json.loads(started_file.read_text())
        demo.check(started["boot_id"] == before.read_text().strip(),
                   f"{mode}: started.json records the boot id")
        demo.check(kill_verified(started["shim_pid"], started["shim_start"])
                   and kill_verified(started["pid"], started["pid_start"]),
                   f"{mode}: shim and command killed")

    print(f"3. `oneshot recover` after the \"reboot\": boot id {after.read_text().strip()}")
    recover = subprocess.run([oneshot(), "recover"], cwd=demo.root, capture_output=True,
                             env={**demo.env, "ONESHOT_BOOT_ID_FILE": str(after)},
                             timeout=TIMEOUT, check=False)
    print("   " + recover.stderr.decode().strip().replace("\n", "\n   "))
    demo.check(recover.returncode == 0, "recover exits 0")

    print("4. each task got the fallback its --on-lost chose:")
    tasks = {mode: demo.show(task_id) for mode, task_id in ids.items()}
    for mode, task in tasks.items():
        print(f"   {mode:<9} -> {task['state']:<11} attempt {task['attempt']}  "
              f"({task['error'] or task['transitions'][-1]['reason']})")
    demo.check(tasks["interrupt"]["state"] == "INTERRUPTED"
               and "rebooted" in (tasks["interrupt"]["error"] or ""),
               "interrupt: INTERRUPTED, with the reboot as its cause")
    demo.check(tasks["fail"]["state"] == "FAILED" and tasks["fail"]["exit_code"] is None
               and "rebooted" in (tasks["fail"]["error"] or ""),
               "fail: FAILED, with the reboot as its cause (no exit code)")
    restarted = tasks["restart"]
    out = demo.cli("logs", ids["restart"], "--raw").stdout
    demo.check((restarted["state"], restarted["attempt"]) == ("COMPLETED", 2)
               and out == b"first run\nsecond run\n",
               f"restart: run again as attempt 2 and COMPLETED; output {out!r}")
    print("holds" if demo.failures == 0 else f"{demo.failures} checks failed")
    return 0 if demo.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(run(demonstrate))
