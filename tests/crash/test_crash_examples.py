"""The crash-simulation examples run as documented and their demonstrations hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "crash_simulation"
SCRIPTS = ["kill_orchestrator.py", "child_dies_while_down.py", "pid_reuse.py", "reboot.py"]
LIMIT = 60.0  # each is meant to take under 30 s; the margin is for a loaded machine

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script", SCRIPTS)
def test_crash_simulation_example_holds(script: str, tmp_path: Path) -> None:
    """`python examples/crash_simulation/<script>` exits 0 within the time limit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    done = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=EXAMPLES.parents[1],
                          env={**env, "TMPDIR": str(tmp_path)}, capture_output=True,
                          timeout=LIMIT, check=False)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output
    assert "  FAIL  " not in done.stdout.decode(), output  # the mark of a failed check
    assert done.stdout.decode().rstrip().endswith("holds"), output
