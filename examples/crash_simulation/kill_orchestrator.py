"""Crash simulation: `oneshot run` is SIGKILLed mid-task; `oneshot recover` reattaches.

The command runs under a detached shim, so killing the orchestrator does not stop it. A new
process, `oneshot recover`, finds the task's shim alive (it holds its lock file), reattaches,
stores the rest of the output from the spool files (starting at the stored offsets, so no byte
is lost or stored twice) and records the command's real exit code.

Run: python examples/crash_simulation/kill_orchestrator.py   (exit 0: the demonstration holds)
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TIMEOUT = 20.0
TOKEN = f"ONESHOT_DEMO_TOKEN={uuid.uuid4().hex}"
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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="oneshot-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            return demonstrate(demo)
        finally:
            kill_leftovers()


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
    sys.exit(main())
