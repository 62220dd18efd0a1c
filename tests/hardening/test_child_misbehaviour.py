"""Commands that misbehave, run through the real ``oneshot`` CLI on a SQLite file.

Each misbehaviour — ignoring SIGTERM, leaving a background grandchild, leaving one that left
the process group with ``setsid``, closing stdout and running on, printing 100 MB without a
newline, dying by a signal — is checked three ways: ``oneshot cancel`` while its ``oneshot
run`` follows it, ``oneshot cancel`` after that orchestrator was SIGKILLed, and ``oneshot
recover`` after the SIGKILL (reattach, then let the command finish). Each time the task's end,
exit code and every stored output byte are checked, and afterwards no process of the test is
left: every process a test starts carries the site's ``ONESHOT_TEST_TOKEN`` in its
environment (grandchildren and escapees inherit it), and ``/proc`` is scanned for it once the
shim is gone — with no grace period: the shim reaps everything before it writes its exit file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from durable.records import Stream
from durable.states import TaskState
from tests.crash.recovery_helpers import (
    TIMEOUT,
    Site,
    alive,
    processes_with_token,
    wait_for,
)
from tests.support import assert_clean_error, sh_wait_for_file

pytestmark = pytest.mark.slow

FLOOD = 100 * 1024 * 1024
GRACE = "1"
READY = 8
"""Bytes of stdout stored when a command has set its misbehaviour up ("started\\n")."""


# Processes of the site ---------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    pid: int
    argv: list[str]
    pgid: int
    sid: int


def site_processes(site: Site) -> list[Proc]:
    """The live processes carrying the site's token, with their argv, group and session."""
    found = []
    for pid in processes_with_token(site.token):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        found.append(Proc(pid, [a.decode(errors="replace") for a in argv], int(fields[2]),
                          int(fields[3])))
    return found


def assert_nothing_left(site: Site, started: dict[str, Any]) -> None:
    """The task's shim (``started.json``) has exited, and no process of the site runs."""
    wait_for(lambda: not alive(started["shim_pid"], started["shim_start"]),
             "the shim to exit after the task ended", timeout=10)
    for proc in site.procs:
        with contextlib.suppress(Exception):
            proc.wait(timeout=TIMEOUT)
    left = site_processes(site)
    assert not left, f"processes left after the task ended: {left}"


# The misbehaviours -------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    state: TaskState
    exit_code: int
    stdout: bytes
    """Exactly what is stored, or (``flood``) nothing: then the FLOOD bytes of ``x``."""
    stderr: bytes = b""
    flood: bool = False


@dataclass(frozen=True)
class Misbehaviour:
    """A shell script; at ``WAIT`` it waits for a ``go`` file before it finishes (the recovery
    test creates it, the cancel tests never do)."""

    script: str
    cancelled: Outcome
    finished: Outcome
    in_place: Callable[[Site, str], bool] = field(default=lambda site, task_id: True)
    ready_bytes: int = READY


WAIT = "{wait}"
"""Where a script waits for its ``go`` file."""
SIGTERMED = -15


def grandchild_in_group(site: Site, task_id: str) -> bool:
    """`sleep 600`, started in the background, runs in the command's process group."""
    pgid = site.started(task_id)["pgid"]
    return any(p.argv == ["sleep", "600"] and p.pgid == pgid for p in site_processes(site))


def escapee_in_own_session(site: Site, task_id: str) -> bool:
    """`sleep 601` leads a session of its own (setsid), with its child `sleep 602` in it."""
    procs = site_processes(site)
    leaders = [p for p in procs if p.argv == ["sleep", "601"] and p.sid == p.pid]
    pgid = site.started(task_id)["pgid"]
    return any(leader.sid != pgid and any(p.argv == ["sleep", "602"] and p.sid == leader.sid
                                          for p in procs) for leader in leaders)


MISBEHAVIOURS = {
    "ignores-sigterm": Misbehaviour(
        f"trap '' TERM; echo started; {WAIT}; echo finished",
        cancelled=Outcome(TaskState.INTERRUPTED, -9, b"started\n"),  # SIGKILL after the grace
        finished=Outcome(TaskState.COMPLETED, 0, b"started\nfinished\n")),
    "background-grandchild": Misbehaviour(
        f"sleep 600 & echo started; {WAIT}; echo finished",
        cancelled=Outcome(TaskState.INTERRUPTED, SIGTERMED, b"started\n"),
        finished=Outcome(TaskState.COMPLETED, 0, b"started\nfinished\n"),
        in_place=grandchild_in_group),
    # The escapee ignores SIGTERM and has a child of its own: a daemon's double fork.
    "setsid-grandchild": Misbehaviour(
        "(setsid sh -c 'trap \"\" TERM; sleep 602 & exec sleep 601' &); "
        f"echo started; {WAIT}; echo finished",
        cancelled=Outcome(TaskState.INTERRUPTED, SIGTERMED, b"started\n"),
        finished=Outcome(TaskState.COMPLETED, 0, b"started\nfinished\n"),
        in_place=escapee_in_own_session),
    "closes-stdout": Misbehaviour(
        f"echo started; exec 1>&-; {WAIT}; echo finished >&2",
        cancelled=Outcome(TaskState.INTERRUPTED, SIGTERMED, b"started\n"),
        finished=Outcome(TaskState.COMPLETED, 0, b"started\n", b"finished\n")),
    "dies-by-signal": Misbehaviour(
        # (The loop's stderr is muted: sh says "Terminated" if a sleep in it caught the TERM.)
        f"ulimit -c 0; trap 'kill -SEGV $$' TERM; echo started; {WAIT} 2>/dev/null; "
        "kill -SEGV $$",
        cancelled=Outcome(TaskState.INTERRUPTED, -11, b"started\n"),
        finished=Outcome(TaskState.FAILED, -11, b"started\n")),
    # Ready as soon as some of it is stored: cancel and the SIGKILL land mid-storage.
    "flood-100mb-one-line": Misbehaviour(
        f"head -c {FLOOD} /dev/zero | tr '\\0' x; {WAIT}",
        cancelled=Outcome(TaskState.INTERRUPTED, SIGTERMED, b"", flood=True),
        finished=Outcome(TaskState.COMPLETED, 0, b"", flood=True),
        ready_bytes=1),
}


class Misbehaving:
    """One misbehaviour started under `oneshot run`: its task, runner and shim identity."""

    def __init__(self, site: Site, name: str) -> None:
        self.site = site
        self.behaviour = MISBEHAVIOURS[name]
        self.go = site.root / "go"
        script = self.behaviour.script.replace(WAIT, sh_wait_for_file(self.go))
        self.run = site.start_run(["sh", "-c", script], "--grace", GRACE)
        self.task_id = task_id = site.task_id(self.run)
        wait_for(lambda: site.running_with_handle(task_id), "the command to start")
        self.started = site.started(task_id)
        wait_for(lambda: site.stored_offset(task_id) >= self.behaviour.ready_bytes,
                 "the command's first output to be stored")
        wait_for(lambda: self.behaviour.in_place(site, task_id),
                 "the misbehaviour to be in place")


@functools.cache
def flood_digest() -> tuple[int, str]:
    """Size and SHA-256 of the FLOOD bytes of ``x`` the flood prints."""
    sha, chunk = hashlib.sha256(), b"x" * (1 << 20)
    for _ in range(FLOOD // len(chunk)):
        sha.update(chunk)
    return FLOOD, sha.hexdigest()


def stored_digest(site: Site, task_id: str, stream: Stream) -> tuple[int, str]:
    """Size and SHA-256 of one stream's stored output, read a fragment at a time (a 100 MB
    output never sits in the test's memory twice)."""
    assert site.db is not None
    total, sha = 0, hashlib.sha256()
    with contextlib.closing(sqlite3.connect(site.db, timeout=TIMEOUT)) as db:
        for (data,) in db.execute("SELECT data FROM log_fragments WHERE task_id = ? AND "
                                  "stream = ? ORDER BY seq", (task_id, int(stream))):
            total += len(data)
            sha.update(data)
    return total, sha.hexdigest()


def assert_outcome(site: Site, task_id: str, expected: Outcome) -> list[str | None]:
    """State, exit code and every stored byte as expected; returns the history's reasons."""
    record, history = site.read_task(task_id)
    assert (record.state, record.exit_code) == (expected.state, expected.exit_code), (
        record.state, record.exit_code, [(t.to_state, t.reason) for t in history])
    if expected.flood:
        assert stored_digest(site, task_id, Stream.STDOUT) == flood_digest()
        assert stored_digest(site, task_id, Stream.STDERR)[0] == 0
    else:
        assert site.stored_logs(task_id) == (expected.stdout, expected.stderr)
    return [t.reason for t in history]


# The tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("runner", ["following", "killed"])
@pytest.mark.parametrize("name", list(MISBEHAVIOURS))
def test_cancel_ends_a_misbehaving_command_interrupted_with_nothing_left(
        site: Site, name: str, runner: str) -> None:
    """`oneshot cancel` (its runner following it, or SIGKILLed before) succeeds — so the task
    ended within the grace + slack that `cancel` waits — INTERRUPTED with the exit code of how
    the command died, all its output stored, and no process left."""
    misbehaving = Misbehaving(site, name)
    task_id = misbehaving.task_id
    if runner == "killed":
        site.kill(misbehaving.run.proc)

    cancel = site.cli("cancel", task_id)
    assert cancel.returncode == 0, cancel.stderr.decode(errors="replace")
    assert b"INTERRUPTED" in cancel.stderr
    expected = misbehaving.behaviour.cancelled
    reasons = assert_outcome(site, task_id, expected)
    assert reasons[-1] == "cancelled (oneshot cancel)"
    if runner == "following":  # like a shell: 128 + the signal that ended the command
        assert misbehaving.run.proc.wait(timeout=TIMEOUT) == 128 - expected.exit_code
    assert_nothing_left(site, misbehaving.started)


@pytest.mark.parametrize("name", list(MISBEHAVIOURS))
def test_recovery_after_the_orchestrator_is_killed_follows_a_misbehaving_command_to_its_end(
        site: Site, name: str) -> None:
    """SIGKILL the `oneshot run`; `oneshot recover` reattaches, the command then finishes:
    the real ending and every output byte are stored once, no process is left."""
    misbehaving = Misbehaving(site, name)
    task_id = misbehaving.task_id
    site.kill(misbehaving.run.proc)

    recover = site.start_cli("recover")
    wait_for(lambda: site.query("SELECT 1 FROM task_states WHERE task_id = ? AND reason LIKE "
                                "'reattached to pid %'", task_id), "recover to reattach")
    misbehaving.go.touch()
    _, err = recover.communicate(timeout=TIMEOUT)
    assert recover.returncode == 0, err.decode(errors="replace")
    assert b"Traceback" not in err
    expected = misbehaving.behaviour.finished
    reasons = assert_outcome(site, task_id, expected)
    if expected.exit_code < 0:
        assert reasons[-1] == "killed by SIGSEGV"
    assert_nothing_left(site, misbehaving.started)


@pytest.mark.parametrize("signal_name, number", [("SEGV", 11), ("KILL", 9)])
def test_run_of_a_command_killed_by_a_signal_exits_128_plus_n_and_records_minus_n(
        site: Site, signal_name: str, number: int) -> None:
    """`kill -SEGV $$` / `kill -9 $$`: `run` exits 139 / 137 like a shell; the task is FAILED
    with exit code -N and "killed by SIGN" (SIGTERM: tests/integration/test_cli.py)."""
    done = site.cli("run", "--", "sh", "-c", f"ulimit -c 0; echo before; kill -{signal_name} $$")
    assert done.returncode == 128 + number, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    (task_id,) = [row[0] for row in site.query("SELECT id FROM tasks")]
    record, history = site.read_task(task_id)
    assert (record.state, record.exit_code) == (TaskState.FAILED, -number)
    assert history[-1].reason == f"killed by SIG{signal_name}"
    assert site.stored_logs(task_id) == (b"before\n", b"")
    shown = site.cli("show", "--json", task_id)
    assert json.loads(shown.stdout)["exit_code"] == -number, shown.stderr
    assert not site_processes(site)


def test_cancel_of_a_task_that_already_ended_is_one_line_and_exit_1(site: Site) -> None:
    """`oneshot cancel` of a finished task says so in one line and exits 1 (it was a
    traceback: the error came out of the orchestrator's task group as an ExceptionGroup)."""
    assert site.cli("run", "--", "true").returncode == 0
    assert "already ended COMPLETED" in assert_clean_error(site.cli("cancel", "last"), 1)
