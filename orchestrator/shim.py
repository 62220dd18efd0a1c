"""The shim: a small detached supervisor that owns one command and outlives the orchestrator.

Run as ``python shim.py RUN_DIR SYNC_FD`` (by path, stdlib only, so it starts fast and never
imports the orchestrator). It double-forks away from its launcher, becomes a session leader and
a child subreaper, takes ``shim.lock`` for its whole life (liveness that pid reuse cannot fool),
and starts the command with stdout and stderr appended straight to ``stdout.log`` and
``stderr.log`` — files, not pipes, so the command never depends on a reader. It writes
``started.json`` (identities of itself and the command), then waits for the command, enforcing
the hard, idle and adaptive timeouts itself, and finally writes ``exit.json`` atomically
(write, fsync, rename, fsync of the directory). Every file carries the attempt id, a fencing
token: a reader ignores files of another attempt.

Files in RUN_DIR (schema version 1): ``spec.json`` (written by the launcher: argv, cwd, env,
attempt, limits), ``shim.lock``, ``started.json``, ``stdout.log``, ``stderr.log``, ``exit.json``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import signal
import sys
import time
from typing import Any

SCHEMA = 1
PR_SET_CHILD_SUBREAPER = 36
POLL = 0.05


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, an identity."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rpartition(b")")[2].split()
    return int(fields[19])


def boot_id() -> str:
    path = os.environ.get("ONESHOT_BOOT_ID_FILE", "/proc/sys/kernel/random/boot_id")
    with open(path) as f:
        return f.read().strip()


def write_json_atomic(directory: str, name: str, data: dict[str, Any], *,
                      durable: bool = False) -> None:
    """Write ``name`` so readers see all of it or nothing (temporary file, then rename).

    ``durable`` also fsyncs the file and the directory, so it survives a power loss. Only the
    exit file needs that: the spec and the start record matter while the shim lives, and a
    power loss ends the shim (recovery then sees a new boot id).
    """
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))
    if durable:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Limits:
    """Hard timeout, idle timeout, and the adaptive timeout (start short, extend on output)."""

    def __init__(self, spec: dict[str, Any], started: float) -> None:
        self.timeout = spec.get("timeout")
        self.idle_timeout = spec.get("idle_timeout")
        adaptive = spec.get("adaptive_timeout")
        self.started = started
        self.deadline = started + self.timeout if self.timeout else None
        self.adaptive = adaptive
        if adaptive:
            self.deadline = started + adaptive["initial"]

    def expired(self, now: float, last_output: float) -> str | None:
        if self.adaptive:
            extended = min(last_output + self.adaptive["extend"],
                           self.started + self.adaptive["maximum"])
            assert self.deadline is not None
            self.deadline = max(self.deadline, extended)
        if self.deadline is not None and now >= self.deadline:
            return "adaptive timeout" if self.adaptive else f"timeout after {self.timeout:g}s"
        if self.idle_timeout and now - last_output >= self.idle_timeout:
            return f"idle timeout: no output for {self.idle_timeout:g}s"
        return None


class Shim:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        with open(os.path.join(run_dir, "spec.json")) as f:
            self.spec: dict[str, Any] = json.load(f)
        self.attempt = self.spec["attempt_id"]
        self.grace = float(self.spec.get("grace", 5.0))
        self.stop_reason: str | None = None
        self.stop_at: float | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def run(self, sync_fd: int) -> int:
        lock_fd = os.open(self.path("shim.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # held until this process ends
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        pid, exec_error = self._start_command()
        if exec_error is not None:
            self._finish(None, None, exec_error, sync_fd=sync_fd)
            return 0
        started = {
            "schema": SCHEMA, "attempt_id": self.attempt, "boot_id": boot_id(),
            "pidns": os.readlink("/proc/self/ns/pid"), "shim_pid": os.getpid(),
            "shim_start": proc_start_time(os.getpid()), "pid": pid,
            "pid_start": proc_start_time(pid), "pgid": pid, "started_at": time.time(),
        }
        write_json_atomic(self.run_dir, "started.json", started)
        self._sync(sync_fd, started)
        status = self._supervise(pid)
        code = os.waitstatus_to_exitcode(status)
        self._finish(code, self.stop_reason, None)
        return 0

    def _sync(self, sync_fd: int, record: dict[str, Any]) -> None:
        try:
            os.write(sync_fd, json.dumps(record).encode() + b"\n")
        except OSError:
            pass  # the launcher died; the files say everything
        finally:
            os.close(sync_fd)

    def _start_command(self) -> tuple[int, str | None]:
        """Fork and exec the command; an exec failure comes back through a CLOEXEC pipe."""
        out_fd = os.open(self.path("stdout.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        err_fd = os.open(self.path("stderr.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        report_r, report_w = os.pipe()  # both non-inheritable: closed by a successful exec
        argv = self.spec["argv"]
        env = self.spec.get("env")
        pid = os.fork()
        if pid == 0:  # the command
            try:
                os.close(report_r)
                os.setpgid(0, 0)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                    signal.signal(signum, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out_fd, 1)
                os.dup2(err_fd, 2)
                if self.spec.get("cwd"):
                    os.chdir(self.spec["cwd"])
                if env is None:
                    os.execvp(argv[0], argv)
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                problem = {errno.ENOENT: "command not found", errno.EACCES: "permission denied"}
                message = problem.get(exc.errno or 0, exc.strerror or str(exc))
                if isinstance(exc, FileNotFoundError) and exc.filename == self.spec.get("cwd"):
                    message = "working directory not found"
                os.write(report_w, message.encode())
            os._exit(127)
        os.close(report_w)
        os.close(out_fd)
        os.close(err_fd)
        report = os.read(report_r, 4096)
        os.close(report_r)
        if report:
            os.waitpid(pid, 0)
            return pid, report.decode()
        return pid, None

    def _on_stop(self, signum: int, _frame: object) -> None:
        if self.stop_reason is None:
            self.stop_reason = "stop requested"
            self.stop_at = None  # _supervise signals the group

    def _supervise(self, pid: int) -> int:
        """Reap children until the command exits; enforce limits and stop requests."""
        limits = Limits(self.spec, time.time())
        sizes = (-1, -1)
        last_output = time.time()
        escalated = False
        while True:
            try:
                reaped, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                reaped, status = pid, 0
            if reaped == pid:
                self._reap_leftovers(pid)
                return status
            if reaped:
                continue  # an orphaned grandchild we adopted as subreaper
            now = time.time()
            current = (self._size("stdout.log"), self._size("stderr.log"))
            if current != sizes:
                sizes, last_output = current, now
            if self.stop_reason is None:
                self.stop_reason = limits.expired(now, last_output)
            if self.stop_reason is not None and self.stop_at is None:
                self._signal_group(pid, signal.SIGTERM)
                self.stop_at = now + self.grace
            elif self.stop_at is not None and now >= self.stop_at and not escalated:
                self._signal_group(pid, signal.SIGKILL)
                escalated = True
            time.sleep(POLL)

    def _size(self, name: str) -> int:
        try:
            return os.stat(self.path(name)).st_size
        except OSError:
            return -1

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)

    def _reap_leftovers(self, pgid: int) -> None:
        """The command is gone: stop what it left behind, and reap every adoptee.

        What it left is its process group and whatever this subreaper adopted: a process that
        left the group (``setsid``, a daemon's double fork) is not reached through the group,
        but once its parent is gone it is our child, so it is signalled by pid — safe, since a
        child's pid cannot be reused before we reap it. Without this, one such escapee kept
        the shim (and the task) waiting until it ended on its own.
        """
        self._signal_group(pgid, signal.SIGTERM)
        self._signal_children(signal.SIGTERM)
        deadline = time.time() + min(self.grace, 2.0)
        killed_group = False
        while True:
            try:
                reaped, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if reaped == 0:
                if time.time() >= deadline:
                    if not killed_group:
                        self._signal_group(pgid, signal.SIGKILL)
                        killed_group = True
                    # Every poll: a killed escapee's own children are adopted next.
                    self._signal_children(signal.SIGKILL)
                time.sleep(POLL)

    @staticmethod
    def _signal_children(signum: int) -> None:
        for child in _children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    def _finish(self, code: int | None, reason: str | None, error: str | None,
                sync_fd: int | None = None) -> None:
        record = {"schema": SCHEMA, "attempt_id": self.attempt, "exit_code": code,
                  "reason": reason, "error": error, "finished_at": time.time()}
        write_json_atomic(self.run_dir, "exit.json", record, durable=True)
        if sync_fd is not None:
            self._sync(sync_fd, record)


def _children() -> list[int]:
    """This (single-threaded) process's children, alive or not yet reaped."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process's parent
        pass
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rpartition(b")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            children.append(int(entry))
    return children


def _detach() -> None:
    """Double fork: the launcher reaps the first child at once; the shim is nobody's child."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # without a subreaper, grandchildren that daemonize escape the group cleanup


def main(argv: list[str]) -> int:
    run_dir, sync_fd = argv[1], int(argv[2])
    _detach()
    return Shim(run_dir).run(sync_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
