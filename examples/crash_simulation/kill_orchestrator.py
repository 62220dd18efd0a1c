"""Crash simulation: `oneshot run` is SIGKILLed mid-task; `oneshot recover` reattaches.

The command runs under a detached shim, so killing the orchestrator does not stop it. A new
process, `oneshot recover`, finds the task's shim alive (it holds its lock file), reattaches,
stores the rest of the output from the spool files (starting at the stored offsets, so no byte
is lost or stored twice) and records the command's real exit code.

Run: python examples/crash_simulation/kill_orchestrator.py   (exit 0: the demonstration holds)
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from _sim import TIMEOUT, Demo, oneshot, read_until, run

TASK = """
import sys, time
for i in range(10):
    print(f"line {i}", flush=True)
    if i % 2:
        print(f"warning {i}", file=sys.stderr, flush=True)
    time.sleep(0.5)
sys.exit(3)
"""
EXPECTED_OUT = "".join(f"line {i}\n" for i in range(10)).encode()
EXPECTED_ERR = "".join(f"warning {i}\n" for i in range(10) if i % 2).encode()


def demonstrate(demo: Demo) -> int:
    print("1. `oneshot run` a command printing 10 lines over ~5 s, exiting with code 3")
    with open(demo.root / "run.err", "wb") as err:
        run = subprocess.Popen([oneshot(), "run", "--", sys.executable, "-c", TASK],
                               env=demo.env, cwd=demo.root, stdout=subprocess.PIPE, stderr=err)
    try:
        read_until(run, b"line 2\n")
        print("2. after 'line 2', SIGKILL the orchestrator (no cleanup, no last write)")
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
    state = demo.show(task_id)["state"]
    print(f"   task {task_id[:12]} is stored as {state}: nobody is following it now")
    demo.check(state == "RUNNING", "the database still says RUNNING")

    print("3. `oneshot recover` (a new process) reattaches to the surviving shim")
    recover = demo.cli("recover")
    print("   " + recover.stderr.decode().strip().replace("\n", "\n   "))
    demo.check(recover.returncode == 0, "recover exits 0")

    task = demo.show(task_id)
    print("4. the task afterwards:")
    for t in task["transitions"]:
        print(f"     {t['from_state'] or '-':>10} -> {t['to_state']:<11} {t['reason'] or ''}")
    demo.check((task["state"], task["exit_code"]) == ("FAILED", 3),
               f"ended {task['state']} with the real exit code {task['exit_code']} (expected 3)")
    demo.check(any("reattached" in (t["reason"] or "") for t in task["transitions"]),
               "recovery reattached to the running command (it was not re-run)")
    out = demo.cli("logs", task_id, "--raw", "--stream", "stdout").stdout
    err = demo.cli("logs", task_id, "--raw", "--stream", "stderr").stdout
    demo.check(out == EXPECTED_OUT, f"stored stdout is complete: {out.count(b'line')} of 10 lines")
    demo.check(err == EXPECTED_ERR, f"stored stderr is complete: {err.count(b'warn')} of 5 lines")
    print("holds" if demo.failures == 0 else f"{demo.failures} checks failed")
    return 0 if demo.failures == 0 else 1


if __name__ == "__main__":
    sys.exit(run(demonstrate))
