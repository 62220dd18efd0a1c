"""The ``oneshot`` CLI as a user runs it: the installed script in a subprocess, a real SQLite file.

State is checked through the CLI's own JSON where that output is the behaviour under test, and
otherwise read directly from the store (faster than another CLI start-up, same data).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from config import OneshotSettings, load_settings
from durable.persistence import store_from_settings
from durable.records import NewTask, TaskKind, TaskRecord, Transition
from durable.states import TaskState
from orchestrator.orchestrator import AsyncOrchestrator, new_task_id
from tests.support import assert_clean_error, oneshot_script

TIMEOUT = 30.0
STABLE_FIELDS = {"id", "name", "kind", "state", "exit_code", "attempt", "created_at",
                 "updated_at"}
TASK_LINE = re.compile(rb"oneshot: task ([0-9a-f]{32})")



class Cli:
    """Runs ``oneshot`` against one database; every process is bounded and cleaned up."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "oneshot.db"
        self.script = oneshot_script()
        self.env = {**os.environ, "ONESHOT_DATABASE__URL": str(self.db)}
        self._procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 timeout: float = TIMEOUT) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.script, *args], capture_output=True, timeout=timeout,
                              cwd=self.tmp_path, env={**self.env, **(env or {})}, check=False)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen([self.script, *args], cwd=self.tmp_path, env=self.env, **kwargs)
        self._procs.append(proc)
        return proc

    def many(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[bytes]]:
        """Run independent commands at once (start-up dominates; this halves the wait)."""
        procs = [(command, self.popen(*command)) for command in commands]
        done = []
        for command, proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess([self.script, *command], proc.returncode,
                                                    out, err))
        return done

    def json(self, *args: str) -> Any:
        proc = self(*args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def run_task(self, *command: str) -> tuple[str, subprocess.CompletedProcess[bytes]]:
        """``oneshot run -- COMMAND``; returns the task id it printed and the process."""
        proc = self("run", "--", *command)
        return task_id_in(proc.stderr), proc

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


def task_id_in(stderr: bytes) -> str:
    match = TASK_LINE.search(stderr)
    assert match, f"no task id in {stderr!r}"
    return match.group(1).decode()


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def read_task(db: Path, task_id: str) -> tuple[TaskRecord, list[Transition], int]:
    """The task, its history and its stored output size, read through a fresh store."""

    async def read() -> tuple[TaskRecord, list[Transition], int]:
        store = store_from_settings(load_settings(
            overrides={"database.url": str(db), "database.auto_upgrade": False}))
        await store.open()
        try:
            record = await store.get_task(task_id)
            return record, await store.history(task_id), (await store.log_size(task_id))[1]
        finally:
            await store.close()

    return anyio.run(read)


def settings_for(db: Path) -> OneshotSettings:
    return load_settings(overrides={"database.url": str(db)})


def run_in_process(db: Path, *argv: str) -> str:
    """Run a command task to its end through the library (no CLI start-up); its id."""

    async def run() -> str:
        async with AsyncOrchestrator(settings_for(db)) as orch:
            handle = await orch.submit(list(argv))
            with anyio.fail_after(TIMEOUT):
                await handle.result()
            return handle.id

    return anyio.run(run)


def queue_in_process(db: Path, *argv: str) -> str:
    """Queue a command task for a worker, as `run --detach` does; its id."""

    async def queue() -> str:
        store = store_from_settings(settings_for(db))
        await store.open()
        try:
            task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, argv=list(argv),
                           cwd=str(db.parent))
            return (await store.create_task(task, reason="queued")).id
        finally:
            await store.close()

    return anyio.run(queue)


def stored_output(db: Path, task_id: str) -> bytes:
    async def read() -> bytes:
        store = store_from_settings(settings_for(db))
        await store.open()
        try:
            return b"".join(f.data for f in await store.read_logs(task_id))
        finally:
            await store.close()

    return anyio.run(read)


def state_of(db: Path, task_id: str) -> TaskState:
    return read_task(db, task_id)[0].state


def wait_for_task_line(path: Path) -> str:
    wait_for(lambda: TASK_LINE.search(path.read_bytes()) is not None, what="the task id")
    return task_id_in(path.read_bytes())


# --- run ------------------------------------------------------------------------------------


def test_run_prints_the_task_id_on_stderr_and_exits_with_the_task_code(cli: Cli) -> None:
    """`run` streams the output, names the task on stderr and exits with the command's code."""
    proc = cli("run", "--name", "demo", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert proc.returncode == 3
    assert proc.stdout == b"out\n"
    assert b"err\n" in proc.stderr
    task_id = task_id_in(proc.stderr)
    record, history, _ = read_task(cli.db, task_id)
    assert (record.name, record.state, record.exit_code) == ("demo", TaskState.FAILED, 3)
    assert [(r.to_state, r.reason) for r in history] == [
        (TaskState.CREATED, "submitted"), (TaskState.RUNNING, "starting"),
        (TaskState.FAILED, "exit 3")]


def test_run_exit_code_of_a_signal_killed_command_is_128_plus_the_signal(cli: Cli) -> None:
    """A command killed by SIGTERM makes `run` exit 143, like a shell."""
    task_id, proc = cli.run_task("sh", "-c", "kill -TERM $$")
    assert proc.returncode == 143
    record, history, _ = read_task(cli.db, task_id)
    assert (record.state, record.exit_code) == (TaskState.FAILED, -15)
    assert history[-1].reason == "killed by SIGTERM"


def test_run_of_a_missing_command_fails_the_task_and_exits_127(cli: Cli) -> None:
    """Command not found: the task ends FAILED with the reason, the CLI says why, exit 127."""
    task_id, proc = cli.run_task("oneshot-no-such-program-xyz")
    assert proc.returncode == 127
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert "oneshot: oneshot-no-such-program-xyz: command not found" in err.splitlines()
    record, history, _ = read_task(cli.db, task_id)
    assert record.state is TaskState.FAILED
    assert record.error == "oneshot-no-such-program-xyz: command not found"
    assert history[-1].reason == record.error


def test_run_without_persistence_writes_no_database(cli: Cli) -> None:
    """`run --no-persist` behaves the same (output, exit code) and creates no file."""
    proc = cli("run", "--no-persist", "--", "sh", "-c", "echo hi; echo there >&2; exit 5")
    assert proc.returncode == 5
    assert proc.stdout == b"hi\n"
    assert b"there\n" in proc.stderr
    task_id_in(proc.stderr)
    assert not cli.db.exists()
    data_home = Path(os.environ["XDG_DATA_HOME"])
    assert not data_home.exists() or not any(data_home.rglob("*"))


def test_sigint_to_a_foreground_run_records_interrupted_and_exits_130(cli: Cli) -> None:
    """Ctrl-C on `run -- sleep 30` stops the command, records INTERRUPTED, exits 130."""
    log = cli.tmp_path / "run.err"
    with log.open("wb") as err:
        proc = cli.popen("run", "--", "sleep", "30", stderr=err)
        task_id = wait_for_task_line(log)
        wait_for(lambda: state_of(cli.db, task_id) is TaskState.RUNNING, what="RUNNING")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 130
    record, history, _ = read_task(cli.db, task_id)
    assert record.state is TaskState.INTERRUPTED
    assert history[-1].reason == "interrupted by SIGINT"
    assert "Traceback" not in log.read_text()


# --- detach and worker ----------------------------------------------------------------------


def detach(cli: Cli, *command: str) -> str:
    proc = cli("run", "--detach", "--", *command)
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{32}", task_id)
    assert task_id in proc.stderr.decode()
    return task_id


def test_detached_task_stays_created_until_a_worker_runs_it(cli: Cli) -> None:
    """`run --detach` queues the task CREATED; `oneshot worker` runs it to COMPLETED."""
    task_id = detach(cli, "sh", "-c", "echo from worker")
    shown = cli.json("show", task_id, "--json")
    assert shown["state"] == "CREATED"
    assert [t["to_state"] for t in shown["transitions"]] == ["CREATED"]
    worker = cli.popen("worker", "--concurrency", "1")
    wait_for(lambda: state_of(cli.db, task_id).is_terminal, what="the task to end")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, err
    assert b"Traceback" not in err
    record, history, size = read_task(cli.db, task_id)
    assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0)
    assert [r.to_state for r in history] == [
        TaskState.CREATED, TaskState.RUNNING, TaskState.COMPLETED]
    assert size == len(b"from worker\n")


def test_a_second_sigterm_to_a_draining_worker_interrupts_its_running_task(cli: Cli) -> None:
    """The first SIGTERM drains; the second stops the worker (exit 0) and its running task is
    INTERRUPTED naming the signal."""
    task_id = queue_in_process(cli.db, "sh", "-c", "echo started; sleep 30")
    worker = cli.popen("worker")
    wait_for(lambda: read_task(cli.db, task_id)[2] > 0, what="the task's first output")
    worker.send_signal(signal.SIGTERM)
    said = bytearray()
    assert worker.stderr is not None
    wait_for(lambda: b"draining" in said or bool(said.extend(worker.stderr.read1())),
             what="the worker to say it drains")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, err
    assert b"Traceback" not in err
    record, history, _ = read_task(cli.db, task_id)
    assert record.state is TaskState.INTERRUPTED
    assert history[-1].reason is not None and "SIGTERM" in history[-1].reason


# --- bad input ------------------------------------------------------------------------------


def test_unknown_task_id_is_a_one_line_error_with_exit_1(cli: Cli) -> None:
    """show/logs of an id that names no task exit 1 with one line and no traceback."""
    run_in_process(cli.db, "true")  # the database exists and holds another task
    for proc in cli.many(("show", "0123abcd"), ("show", "--json", "0123abcd"),
                         ("logs", "-f", "not-an-id")):
        line = assert_clean_error(proc, 1)
        assert "no such task" in line


def test_unwritable_database_path_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    """A database under a regular file: exit 1, the path named, no traceback, for every verb."""
    (tmp_path / "file").write_text("not a directory")
    cli.env["ONESHOT_DATABASE__URL"] = str(tmp_path / "file" / "x.db")
    for proc in cli.many(("ls",), ("run", "--", "true"), ("db", "check")):
        line = assert_clean_error(proc, 1)
        assert str(tmp_path / "file") in line


def test_non_utf8_and_nul_bytes_are_stored_and_returned_byte_exact(cli: Cli) -> None:
    """Output with NUL and invalid UTF-8 comes back exactly, per stream, from `logs --raw`."""
    out_bytes, err_bytes = b"\xff\x00\xfeabc\n\x80", b"\x00\xc3(err"
    task_id, proc = cli.run_task(
        "sh", "-c", r"printf '\377\000\376abc\n\200'; printf '\000\303(err' >&2")
    assert proc.returncode == 0
    assert proc.stdout == out_bytes
    stderr, both = cli.many(("logs", "--raw", "--stream", "stderr", task_id),
                            ("logs", "--raw", task_id))
    assert stderr.stdout == err_bytes
    assert both.stdout in (out_bytes + err_bytes, err_bytes + out_bytes)
    assert read_task(cli.db, task_id)[2] == len(out_bytes) + len(err_bytes)


PEAK_RSS_WRAPPER = """
import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     timeout=120)
print(run.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(run.stderr.decode(errors="replace"))
"""


@pytest.mark.parametrize("megabytes", [50, pytest.param(100, marks=pytest.mark.slow)])
def test_a_long_line_without_newline_is_captured_completely_in_bounded_memory(
        cli: Cli, megabytes: int) -> None:
    """A 50 / 100 MB line is stored whole (size and hash) while `run` stays under 150 MB of
    RSS (100 MB: the hardening case of issue #8; its cancel and recovery are in
    tests/hardening/test_child_misbehaviour.py)."""
    size = megabytes * 1024 * 1024
    wrapper = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WRAPPER, cli.script, "run", "--", "sh", "-c",
         f"head -c {size} /dev/zero | tr '\\0' x"],
        capture_output=True, timeout=TIMEOUT * 2, cwd=cli.tmp_path, env=cli.env, check=True)
    code, peak_kib = (int(word) for word in wrapper.stdout.split()[:2])
    assert code == 0
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib // 1024} MB"
    task_id = task_id_in(wrapper.stdout)
    record, _, stored = read_task(cli.db, task_id)
    assert (record.state, stored) == (TaskState.COMPLETED, size)
    raw = cli.tmp_path / "raw.out"
    with raw.open("wb") as out:
        proc = cli.popen("logs", "--raw", task_id, stdout=out)
        assert proc.wait(timeout=TIMEOUT) == 0
    assert raw.stat().st_size == size
    digest = hashlib.sha256()
    with raw.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


def test_bad_config_value_exits_2_naming_the_variable(cli: Cli) -> None:
    """ONESHOT_CONCURRENCY=abc is a configuration error: exit 2, the variable named."""
    cli.env["ONESHOT_CONCURRENCY"] = "abc"
    for proc in cli.many(("ls",), ("run", "--", "true")):
        line = assert_clean_error(proc, 2)
        assert "ONESHOT_CONCURRENCY" in line
    assert not cli.db.exists()


def test_bad_usage_exits_2(cli: Cli) -> None:
    """An invalid --state, or --detach without persistence, is a usage error: exit 2."""
    bad_state, detach_memory = cli.many(("ls", "--state", "BOGUS"),
                                        ("run", "--detach", "--no-persist", "--", "true"))
    assert bad_state.returncode == 2
    assert b"--state" in bad_state.stderr and b"Traceback" not in bad_state.stderr
    line = assert_clean_error(detach_memory, 2)
    assert "--detach" in line


# --- ls and show ----------------------------------------------------------------------------


def test_ls_and_show_json_have_the_stable_fields_and_ls_filters_by_state(cli: Cli) -> None:
    """`ls --json` and `show --json` carry the stable fields; `ls --state FAILED` filters."""
    ok_id = run_in_process(cli.db, "true")
    failed_id = run_in_process(cli.db, "sh", "-c", "exit 3")
    everything, failed, newest, shown, table = cli.many(
        ("ls", "--json"), ("ls", "--json", "--state", "FAILED"), ("ls", "--json", "--limit", "1"),
        ("show", "--json", failed_id[:10]), ("show", failed_id))
    rows = json.loads(everything.stdout)
    assert [row["id"] for row in rows] == [failed_id, ok_id]
    for row in rows:
        assert set(row) >= STABLE_FIELDS
        assert row["kind"] == "command"
        assert row["attempt"] == 1
    assert [(r["id"], r["state"], r["exit_code"]) for r in json.loads(failed.stdout)] == [
        (failed_id, "FAILED", 3)]
    assert [r["id"] for r in json.loads(newest.stdout)] == [failed_id]
    detail = json.loads(shown.stdout)
    assert set(detail) >= STABLE_FIELDS | {"transitions", "steps"}
    assert (detail["id"], detail["state"], detail["exit_code"]) == (failed_id, "FAILED", 3)
    assert detail["steps"] == []
    assert [(t["from_state"], t["to_state"], t["reason"]) for t in detail["transitions"]] == [
        (None, "CREATED", "submitted"), ("CREATED", "RUNNING", "starting"),
        ("RUNNING", "FAILED", "exit 3")]
    assert detail["created_at"] <= detail["updated_at"]
    assert table.returncode == 0
    for word in (failed_id, "FAILED", "exit 3", "timeline"):
        assert word in table.stdout.decode()


# --- logs -----------------------------------------------------------------------------------


def test_logs_tail_and_stream_select_what_is_printed(cli: Cli) -> None:
    """--tail N gives the last N lines; --stream picks one stream."""
    task_id = run_in_process(
        cli.db, "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line$i; done; echo oops >&2")
    tail3, only_err, tail_out = cli.many(
        ("logs", "--tail", "3", "--raw", task_id),
        ("logs", "--stream", "stderr", "--raw", task_id),
        ("logs", "--stream", "stdout", "--tail", "2", task_id))
    assert tail3.stdout == b"line9\nline10\noops\n"
    assert only_err.stdout == b"oops\n"
    assert (tail_out.stdout, tail_out.stderr) == (b"line9\nline10\n", b"")


@pytest.mark.slow
def test_logs_follow_from_another_process_equals_the_full_output(cli: Cli) -> None:
    """`logs -f` started mid-run prints exactly what the task printed and ends when it ends."""
    script = 'for i in $(seq 1 25); do echo "out $i"; echo "err $i" >&2; sleep 0.1; done'
    log = cli.tmp_path / "run.err"
    with log.open("wb") as err:
        run = cli.popen("run", "--", "sh", "-c", script, stdout=subprocess.DEVNULL, stderr=err)
        task_id = wait_for_task_line(log)
        follow_all = cli.popen("logs", "-f", "--raw", task_id)
        follow_out = cli.popen("logs", "-f", "--raw", "--stream", "stdout", task_id)
        assert run.poll() is None, "the task ended before anyone followed it"
        followed, follow_err = follow_all.communicate(timeout=TIMEOUT)
        followed_out, _ = follow_out.communicate(timeout=TIMEOUT)
        assert run.wait(timeout=TIMEOUT) == 0
    assert (follow_all.returncode, follow_out.returncode) == (0, 0), follow_err
    assert followed_out == b"".join(b"out %d\n" % i for i in range(1, 26))
    assert followed == stored_output(cli.db, task_id)
    assert len(followed) == len(followed_out) + sum(len(b"err %d\n" % i) for i in range(1, 26))


# --- db and config --------------------------------------------------------------------------


def test_db_upgrade_then_check_succeed_on_a_fresh_database(cli: Cli) -> None:
    """`db upgrade` creates and migrates a fresh file; `db check` then reports it healthy."""
    upgrade = cli("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    check = cli("db", "check")
    assert check.returncode == 0, check.stderr
    report = check.stdout.decode()
    assert "quick_check:  ok" in report
    assert "revision:" in report and "none" not in report


def test_db_check_on_a_garbage_file_fails_clearly(cli: Cli) -> None:
    """A file that is not a database: `db check` (and `ls`) exit 1 naming it, no traceback."""
    cli.db.write_bytes(b"this is not a database\n" + bytes(range(256)) * 64)
    for proc in cli.many(("db", "check"), ("ls",)):
        line = assert_clean_error(proc, 1)
        assert str(cli.db) in line
        assert "not a usable SQLite database" in line


def test_config_shows_database_url_and_where_it_came_from(cli: Cli) -> None:
    """`config` reports database.url with its source: the env variable, or the --db flag."""
    from_env, from_flag = cli.many(
        ("config", "--json"), ("--db", str(cli.tmp_path / "other.db"), "config", "--json"))
    url = json.loads(from_env.stdout)["database.url"]
    assert url["value"].endswith(str(cli.db))
    assert url["source"] == "env ONESHOT_DATABASE__URL"
    flagged = json.loads(from_flag.stdout)["database.url"]
    assert flagged["value"].endswith(str(cli.tmp_path / "other.db"))
    assert flagged["source"] == "flag"
