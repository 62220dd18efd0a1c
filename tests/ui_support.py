"""Helpers for the `oneshot ui` tests (imported as ``tests.ui_support``; not a test module)."""

from __future__ import annotations

import contextlib
import re
import select
import subprocess
from collections.abc import Iterator

from tests.support import oneshot_script

START_TIMEOUT = 30.0
URL_LINE = re.compile(r"oneshot: dashboard on (http://\S+) ")


@contextlib.contextmanager
def running_dashboard(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real `oneshot ui --port 0` process and the URL it printed; killed afterwards if it
    is still running (its stderr stays readable until then)."""
    proc = subprocess.Popen([oneshot_script(), "ui", "--port", "0"], env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], START_TIMEOUT)
        assert ready, "oneshot ui printed no URL"
        line = proc.stderr.readline()
        match = URL_LINE.match(line)
        assert match, line
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(START_TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()
