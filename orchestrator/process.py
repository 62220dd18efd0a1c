"""The one module that starts processes: every command runs under a detached shim.

:func:`spawn` writes the run directory's ``spec.json``, starts :mod:`orchestrator.shim` by path
(it double-forks, so the orchestrator is never the command's parent) and waits for the shim's
``started.json`` record on a sync pipe. :class:`ShimProcess` is the orchestrator's view of a
shim, whether it started it a moment ago or reattaches to it after a crash: it tails the spool
files from byte offsets, reads the exit file, and signals the shim only after verifying its
identity (lock held, pid and start time matching, through a pidfd).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from durable.exceptions import CommandNotFound
from durable.private import make_private_dirs
from durable.records import ProcessHandle, Stream
from orchestrator.shim import boot_id, proc_start_time, write_json_atomic

SHIM_PATH = Path(__file__).with_name("shim.py")
LAUNCH_TIMEOUT = 10.0
TAIL_INTERVALS = (0.002, 0.05)
"""Polling of the spool files backs off from the first to the second while nothing comes."""
READ_SIZE = 1 << 20
SPOOL_FILES = {Stream.STDOUT: "stdout.log", Stream.STDERR: "stderr.log"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Enforced by the shim, so they hold while no orchestrator is running."""

    timeout: float | None = None
    idle_timeout: float | None = None
    adaptive: tuple[float, float, float] | None = None  # initial, extend by, maximum
    grace: float = 5.0

    def as_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"timeout": self.timeout, "idle_timeout": self.idle_timeout,
                                "grace": self.grace}
        if self.adaptive is not None:
            initial, extend, maximum = self.adaptive
            spec["adaptive_timeout"] = {"initial": initial, "extend": extend, "maximum": maximum}
        return spec


@dataclass(frozen=True, slots=True)
class ExitInfo:
    """``exit.json``: the code (``-N`` for signal N), why the shim stopped it, exec errors."""

    code: int | None
    reason: str | None = None
    error: str | None = None


def run_dir_for(spool: Path, task_id: str, attempt: int) -> Path:
    return spool / task_id / str(attempt)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ShimProcess:
    def __init__(self, run_dir: Path, started: Mapping[str, Any],
                 offsets: tuple[int, int] = (0, 0)) -> None:
        self.run_dir = run_dir
        self.started = dict(started)
        self.offsets = {Stream.STDOUT: offsets[0], Stream.STDERR: offsets[1]}
        self.pid: int = int(started["pid"])
        self.shim_pid: int = int(started["shim_pid"])
        self.notes: list[str] = []
        """What went wrong with the spool files, not yet recorded (see :meth:`take_notes`)."""

    @classmethod
    def attach(cls, run_dir: Path, offsets: tuple[int, int]) -> ShimProcess | None:
        """The shim of ``run_dir`` from its ``started.json``; None if it never started.

        A spool file shorter than its stored offset was cut behind our back. After a reboot
        that is the page cache lost with the machine: everything it still holds is stored, so
        reading goes on from its end. On the same boot someone truncated it (``: > file``,
        copytruncate): what it holds was written since, so it is read again from its start —
        an emptied file loses nothing; a file cut to N bytes has those N bytes stored twice.
        Either way a note says so (:meth:`take_notes`).
        """
        started = _read_json(run_dir / "started.json")
        if started is None:
            return None
        child = cls(run_dir, started, offsets)
        same_boot = started.get("boot_id") == current_boot_id()
        for stream, name in SPOOL_FILES.items():
            try:
                size = (run_dir / name).stat().st_size
            except OSError:
                size = 0
            if size < child.offsets[stream]:
                child._truncated(stream, size, read_again=same_boot)
        return child

    def _truncated(self, stream: Stream, size: int, *, read_again: bool) -> None:
        name, stored = SPOOL_FILES[stream], self.offsets[stream]
        self.offsets[stream] = 0 if read_again else size
        self.notes.append(
            f"{name} was truncated to {size} bytes, below the {stored} already read: "
            + ("read again from its start" if read_again else
               "read on from its end (the machine rebooted)"))

    def take_notes(self) -> str:
        """The notes not yet recorded, as ``"; note"...`` to append to a reason ('' if none)."""
        notes, self.notes = self.notes, []
        return "".join(f"; {note}" for note in notes)

    def handle(self, task_id: str, attempt: int) -> ProcessHandle:
        s = self.started
        return ProcessHandle(
            task_id=task_id, attempt=attempt, run_dir=str(self.run_dir),
            host=socket.gethostname(), boot_id=s.get("boot_id"), shim_pid=self.shim_pid,
            shim_start=s.get("shim_start"), pid=self.pid, pid_start=s.get("pid_start"),
            pgid=s.get("pgid"), stdout_offset=self.offsets[Stream.STDOUT],
            stderr_offset=self.offsets[Stream.STDERR],
        )

    def lock_held(self) -> bool:
        """Whether the shim is alive: it holds ``shim.lock`` for its whole life."""
        try:
            fd = os.open(self.run_dir / "shim.lock", os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock if we took it
        return False

    def exit_info(self) -> ExitInfo | None:
        data = _read_json(self.run_dir / "exit.json")
        if data is None or data.get("attempt_id") != self.started.get("attempt_id"):
            return None
        return ExitInfo(data.get("exit_code"), data.get("reason"), data.get("error"))

    def finished(self) -> bool:
        """No more output will come: the exit file is written, or the shim is gone."""
        return self.exit_info() is not None or not self.lock_held()

    async def output(self) -> AsyncIterator[tuple[Stream, bytes]]:
        """New spool bytes from the offsets on, until the shim has finished and all is read."""
        fds = {}
        try:
            for stream, name in SPOOL_FILES.items():
                fds[stream] = os.open(self.run_dir / name, os.O_RDONLY | os.O_CREAT, 0o600)
            interval = TAIL_INTERVALS[0]
            while True:
                progressed = False
                for stream, fd in fds.items():
                    data = os.pread(fd, READ_SIZE, self.offsets[stream])
                    if data:
                        self.offsets[stream] += len(data)
                        progressed = True
                        yield stream, data
                    elif (size := os.fstat(fd).st_size) < self.offsets[stream]:
                        # Truncated while we follow: what the command writes next lands at
                        # the new end, below our offset, so read again from the start.
                        self._truncated(stream, size, read_again=True)
                        progressed = True
                if progressed:
                    interval = TAIL_INTERVALS[0]
                    await anyio.sleep(0)  # let the loop breathe between reads of a flood
                elif self.finished():
                    # Checked only after an empty read, and followed by one more: whatever was
                    # written before the exit file or the lock's release is read.
                    async for item in self._drain(fds):
                        yield item
                    return
                else:
                    await anyio.sleep(interval)
                    interval = min(interval * 2, TAIL_INTERVALS[1])
        finally:
            for fd in fds.values():
                os.close(fd)

    async def _drain(self, fds: dict[Stream, int]) -> AsyncIterator[tuple[Stream, bytes]]:
        for stream, fd in fds.items():
            while data := os.pread(fd, READ_SIZE, self.offsets[stream]):
                self.offsets[stream] += len(data)
                yield stream, data
                await anyio.sleep(0)

    def identity_matches(self) -> bool:
        return proc_start_time(self.shim_pid) == self.started.get("shim_start")

    def stop(self) -> bool:
        """Ask the shim to stop the command (SIGTERM to the group, SIGKILL after the grace).

        Signals only a verified shim: the pid is pinned with a pidfd, then its start time and
        the lock are checked, so a reused pid is never signalled. False if it is not running.
        """
        try:
            pidfd = os.pidfd_open(self.shim_pid)
        except (ProcessLookupError, OSError):
            return False
        try:
            if not (self.identity_matches() and self.lock_held()):
                return False
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)

    async def remove_spool(self) -> None:
        """Drop the run directory once everything in it is committed to the database (in a
        worker thread: on a busy disk, unlinking waits behind journal commits)."""
        await anyio.to_thread.run_sync(_remove_run_dir, self.run_dir)


def _remove_run_dir(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.parent.rmdir()  # the task's directory, if no other attempt is left


def _prepare_run_dir(run_dir: Path, spec: dict[str, Any]) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)  # a launch that never started, retried
    make_private_dirs(run_dir)
    write_json_atomic(str(run_dir), "spec.json", spec)


def _reap_launcher(launcher: subprocess.Popen[bytes]) -> None:
    """Collect the first fork even when the launch was cancelled or timed out, so no zombie
    (and no ResourceWarning) is left; it exits at once, so a stuck one is killed."""
    try:
        launcher.wait(LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def _await_sync(read_fd: int, launcher: subprocess.Popen[bytes]) -> bytes:
    """The shim's one-line record; blocks (in a worker thread) up to LAUNCH_TIMEOUT."""
    _reap_launcher(launcher)  # the first fork exits at once
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([read_fd], [], [], LAUNCH_TIMEOUT)
        if not ready:
            break
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


async def spawn(
    argv: list[str],
    *,
    run_dir: Path,
    attempt_id: str,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    limits: Limits = Limits(),
    check_lease: Callable[[], None] = lambda: None,
) -> ShimProcess:
    """Start ``argv`` (no shell) under a new shim; raise CommandNotFound if it cannot start.

    ``check_lease`` is called right before each step that would disturb the launch of a
    worker that took the task over meanwhile (clearing the run directory, starting the shim);
    it raises to abandon the launch."""
    if not argv:
        raise CommandNotFound("", "empty command")
    program = argv[0]
    search_path = (env or os.environ).get("PATH")
    if os.sep not in program and shutil.which(program, path=search_path) is None:
        raise CommandNotFound(program, "command not found")
    if cwd and not os.path.isdir(cwd):
        raise CommandNotFound(program, "working directory not found")
    spec = {"schema": 1, "attempt_id": attempt_id, "argv": argv, "cwd": cwd,
            "env": dict(env) if env is not None else None, **limits.as_spec()}
    check_lease()
    await anyio.to_thread.run_sync(_prepare_run_dir, run_dir, spec)
    read_fd, write_fd = os.pipe()
    launcher: subprocess.Popen[bytes] | None = None
    try:
        err_fd = os.open(run_dir / "shim.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(err_fd, "wb") as shim_err:
            check_lease()
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-S", str(SHIM_PATH), str(run_dir), str(write_fd)],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=shim_err, start_new_session=True,
            )
        os.close(write_fd)
        write_fd = -1
        line = await anyio.to_thread.run_sync(_await_sync, read_fd, launcher)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        if launcher is not None and launcher.returncode is None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_reap_launcher, launcher)
    try:
        record = json.loads(line)
    except ValueError:
        problem = (run_dir / "shim.err").read_text(errors="replace").strip()[-500:]
        problem = problem or "no record"
        raise CommandNotFound(program, f"the shim did not start: {problem}") from None
    if record.get("error"):
        shutil.rmtree(run_dir, ignore_errors=True)
        raise CommandNotFound(program, record["error"])
    return ShimProcess(run_dir, record)


def current_boot_id() -> str:
    return boot_id()
