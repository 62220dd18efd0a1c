"""Damaged state: the database file, single task rows, the spool files under a task.

The database file (SQLite): what every command says about a damaged file, `db check` and
`db check --repair` are tested in tests/integration/test_backup.py for random bytes, a text
file, a file truncated to half or inside its header, and garbage table pages; here: garbage in
the middle of the file (only what reads those pages fails), a file cut mid-page (undetected:
a known limit), an empty file, and a page going bad under a running command.

Rows: unknown state, invalid or mistyped ``argv`` are tested in tests/crash/test_recovery.py
(``test_corrupt_rows_end_failed_while_the_others_recover``); here: invalid and mistyped
``options``, with the commands of the corrupt rows still running.

Spool files: a ``stdout.log`` shorter than the offset already stored (truncated behind
Oneshot's back) while no orchestrator runs, and while one follows the task.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from config import load_settings
from durable.states import TaskState
from orchestrator.options import RunOptions
from orchestrator.orchestrator import AsyncOrchestrator
from tests.crash.recovery_helpers import (
    TIMEOUT,
    Site,
    alive,
    processes_with_token,
    wait_for,
)
from tests.support import (
    assert_clean_error,
    damage_log_pages,
    orchestrate,
    sh_wait_for_file,
)

pytestmark = pytest.mark.slow

SEQ = b"".join(b"%d\n" % i for i in range(1, 2001))
"""What `seq 1 2000` prints."""


def reasons(site: Site, task_id: str) -> list[str]:
    return [t.reason or "" for t in site.read_task(task_id)[1]]


def many(site: Site, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[bytes]]:
    """Run CLI commands at once (start-up dominates); each result carries its arguments."""
    procs = [(command, site.start_cli(*command)) for command in commands]
    done = []
    for command, proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return done


def history(site: Site, *argvs: list[str]) -> list[str]:
    """Run each command to its end in this process; their task ids."""

    async def body(orch: AsyncOrchestrator) -> list[str]:
        handles = [await orch.submit(argv) for argv in argvs]
        for handle in handles:
            await handle.outcome()
        return [handle.id for handle in handles]

    ids: list[str] = orchestrate(load_settings(overrides=site.database.overrides()), body)
    return ids


def dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read with SQLite itself."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = "
                                            "'table' AND name NOT LIKE 'sqlite_%'")]
        return {name: conn.execute(f'SELECT * FROM "{name}"').fetchall() for name in names}


def moved_aside(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir()
            if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))]


DAMAGED = "not a usable SQLite database"
BIG = ["sh", "-c", "seq 1 30000"]


def assert_no_process_left(site: Site) -> None:
    for proc in site.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=TIMEOUT)
    wait_for(lambda: not processes_with_token(site.token), "every process of the test to end",
             timeout=10)


# --- (a), (b) the database file ---------------------------------------------------------------

def test_garbage_in_the_middle_fails_only_what_reads_those_pages(site: Site) -> None:
    """Garbage pages amid one task's output: `ls`, `show`, the other task's `logs` and a new
    `run` work; `logs` of the damaged output is one line, exit 1, naming the file and
    `--repair`; `db check --repair` moves the file aside and starts a fresh one."""
    assert site.db is not None
    big, small = history(site, BIG, ["echo", "hi"])
    damage_log_pages(site.db)
    ls, show, logs_small, logs_big, run = many(
        site, ("ls", "--json"), ("show", big), ("logs", "--raw", small), ("logs", "--raw", big),
        ("run", "--", "echo", "more"))
    assert ls.returncode == 0, ls.stderr
    assert {row["id"] for row in json.loads(ls.stdout)} >= {big, small}
    assert show.returncode == 0 and big in show.stdout.decode(), show.stderr
    assert (logs_small.returncode, logs_small.stdout) == (0, b"hi\n"), logs_small.stderr
    assert (run.returncode, run.stdout) == (0, b"more\n"), run.stderr
    line = assert_clean_error(logs_big, 1)
    assert str(site.db) in line and DAMAGED in line and "--repair" in line

    repair = site.cli("db", "check", "--repair")
    assert repair.returncode == 0, repair.stderr
    (aside,) = moved_aside(site.db)
    assert str(aside) in repair.stderr.decode()
    ls = site.cli("ls", "--json")
    assert (ls.returncode, ls.stdout.strip()) == (0, b"[]"), ls.stderr


def cut_mid_page(db: Path) -> None:
    """Cut the last 1000 bytes: the file ends inside its last page (a torn write)."""
    os.truncate(db, db.stat().st_size - 1000)


def test_a_file_cut_mid_page_is_reported_by_db_check_while_commands_still_work(
        site: Site) -> None:
    """SQLite keeps no page checksums: the cut tail of the last page reads back as zeros, so
    commands work and integrity_check passes. The size gives it away (SQLite writes whole
    pages): `db check` names the torn page and exits 1."""
    assert site.db is not None
    history(site, BIG)
    before = dump(site.db)
    cut_mid_page(site.db)
    assert dump(site.db) != before, "the cut reached no stored bytes"
    check, ls = many(site, ("db", "check", "--integrity"), ("ls",))
    assert (check.returncode, ls.returncode) == (1, 0), (check.stderr, ls.stderr)
    assert "ends inside a page" in check.stdout.decode() + check.stderr.decode()


def test_an_empty_database_file_is_a_new_database(site: Site) -> None:
    """A file truncated to 0 bytes is, for SQLite, a new database: `db check` finds no schema
    (exit 1: run `oneshot db upgrade`), and any other command migrates it and works on an empty
    history — nothing says history was lost (the size was the only evidence)."""
    assert site.db is not None
    history(site, ["echo", "hi"])
    os.truncate(site.db, 0)
    assert "db upgrade" in assert_clean_error(site.cli("db", "check"), 1)
    ls = site.cli("ls", "--json")
    assert (ls.returncode, ls.stdout.strip()) == (0, b"[]"), ls.stderr
    assert site.cli("db", "check").returncode == 0


def damage_log_table_roots(db: Path) -> None:
    """Garbage over the root pages of log_fragments and its indexes (the file is closed)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pages = [r[0] for r in conn.execute("SELECT rootpage FROM sqlite_master WHERE "
                                            "tbl_name = 'log_fragments' AND rootpage > 0")]
    rng = random.Random(3)
    with db.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * 4096)
            file.write(rng.randbytes(4096))


def test_damage_found_by_a_running_task_lets_it_go_and_its_command_finishes(
        site: Site) -> None:
    """The output table is damaged: `run` starts the command, its first output commit fails,
    and it lets the task go (exit 75, no traceback) without killing the command, whose output
    stays in its spool; `db check` reports the damage, `--repair` starts a fresh file."""
    assert site.db is not None
    history(site, BIG)
    damage_log_table_roots(site.db)
    go = site.root / "go"
    run = site.start_run(["sh", "-c", f"echo hello; {sh_wait_for_file(go)}; echo bye"])
    assert run.proc.wait(timeout=TIMEOUT) == 75
    err = run.stderr.read_bytes()
    assert b"Traceback" not in err and b"malformed" in err, err
    task_id = site.task_id(run)
    run_dir = site.spool / task_id / "1"
    started = json.loads((run_dir / "started.json").read_text())
    assert alive(started["pid"], started["pid_start"]), "the command was killed"

    assert DAMAGED in assert_clean_error(site.cli("db", "check"), 1)
    assert site.cli("db", "check", "--repair").returncode == 0
    go.touch()
    wait_for(lambda: not alive(started["shim_pid"], started["shim_start"]), "the shim to end")
    assert (run_dir / "stdout.log").read_bytes() == b"hello\nbye\n"
    assert json.loads((run_dir / "exit.json").read_text())["exit_code"] == 0
    assert_no_process_left(site)


# --- (c) corrupt rows -------------------------------------------------------------------------

def test_corrupt_rows_end_failed_their_commands_stopped_while_the_others_recover(
        site: Site) -> None:
    """`options` not JSON, or JSON of the wrong type, and `argv` not JSON, on orphans whose
    commands still run: recover ends them FAILED "corrupt state: ...", stops their commands
    (none is left running unwatched), and still reattaches the healthy orphan beside them."""
    sleeper = (["sleep", "30"], RunOptions(grace=1))
    go = site.root / "go"
    healthy = ["sh", "-c", f"echo one; {sh_wait_for_file(go)}; echo two"]
    corrupt = ("garbage", "list", "number", "argv")
    ids = site.orphan_all({**{name: sleeper for name in corrupt},
                           "healthy": (healthy, RunOptions())})
    commands = {name: site.started(ids[name]) for name in corrupt}
    site.execute("UPDATE tasks SET options = '{\"grace\": ' WHERE id = ?", ids["garbage"])
    site.execute("UPDATE tasks SET options = '[1, 2]' WHERE id = ?", ids["list"])
    site.execute("UPDATE tasks SET options = '7' WHERE id = ?", ids["number"])
    site.execute("UPDATE tasks SET argv = '[\"sleep\", ' WHERE id = ?", ids["argv"])
    recover = site.start_cli("recover")
    wait_for(lambda: site.state(ids["healthy"]) == "RUNNING"
             and site.query("SELECT 1 FROM task_states WHERE task_id = ? AND reason LIKE "
                            "'reattached%'", ids["healthy"]), "the healthy task to reattach")
    go.touch()
    _, err = recover.communicate(timeout=TIMEOUT)
    assert recover.returncode == 0, err.decode(errors="replace")
    assert b"Traceback" not in err

    for name, started in commands.items():
        (state, error), = site.query("SELECT state, error FROM tasks WHERE id = ?", ids[name])
        assert (state, error.startswith("corrupt state: ")) == ("FAILED", True), (name, error)
        wait_for(lambda s=started: not alive(s["pid"], s["pid_start"]),
                 f"the command of the corrupt {name} task to be stopped")
    record, _ = site.read_task(ids["healthy"])
    assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0)
    assert site.stored_logs(ids["healthy"]) == (b"one\ntwo\n", b"")
    assert_no_process_left(site)


def test_a_worker_fails_queued_tasks_with_corrupt_options_and_runs_the_others(
        site: Site) -> None:
    """Queued tasks whose `options` are not JSON or not an object: the worker that claims them
    ends them FAILED "corrupt state: ..." and runs the healthy task queued beside them."""
    ids = site.queue({"garbage": (["true"], RunOptions()), "list": (["true"], RunOptions()),
                      "healthy": (["echo", "ran"], RunOptions())})
    site.execute("UPDATE tasks SET options = '{\"grace\": ' WHERE id = ?", ids["garbage"])
    site.execute("UPDATE tasks SET options = '[]' WHERE id = ?", ids["list"])
    worker = site.start_cli("worker")
    wait_for(lambda: all(site.state(i) in ("COMPLETED", "FAILED") for i in ids.values()),
             "every queued task to end")
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0 and b"Traceback" not in err, err.decode(errors="replace")
    for name in ("garbage", "list"):
        (state, error), = site.query("SELECT state, error FROM tasks WHERE id = ?", ids[name])
        assert state == "FAILED" and error.startswith("corrupt state: "), (name, error)
    assert site.state(ids["healthy"]) == "COMPLETED"
    assert site.stored_logs(ids["healthy"]) == (b"ran\n", b"")


def test_a_queued_row_with_invalid_argv_json_blocks_neither_ls_nor_the_queue(
        site: Site) -> None:
    """One queued row whose argv is not JSON: `ls` still lists (one clean line at worst) and
    a worker still runs the healthy task queued after it."""
    ids = site.queue({"bad": (["true"], RunOptions()), "healthy": (["true"], RunOptions())})
    site.execute("UPDATE tasks SET argv = '[\"true\", ' WHERE id = ?", ids["bad"])
    ls = site.cli("ls")
    assert b"Traceback" not in ls.stderr, ls.stderr.decode(errors="replace")
    worker = site.start_cli("worker")
    try:
        wait_for(lambda: site.state(ids["healthy"]) == "COMPLETED", "the healthy task",
                 timeout=8)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=TIMEOUT)


# --- (d) a spool file shorter than what is stored ---------------------------------------------

@pytest.mark.parametrize("keep", [0, 4000], ids=["emptied", "cut"])
def test_spool_truncated_while_no_orchestrator_runs_is_read_again_from_its_start(
        site: Site, keep: int) -> None:
    """stdout.log cut to ``keep`` bytes (below the 8893 stored) while no orchestrator runs:
    recover notices, says so in the reattach reason, and reads the file again from its start
    — what was written since is stored (an emptied file: nothing twice; a cut one: its first
    ``keep`` bytes twice); the offsets stay right through a second crash."""
    go1, go2 = site.root / "go1", site.root / "go2"
    script = (f"seq 1 2000; {sh_wait_for_file(go1)}; echo second; {sh_wait_for_file(go2)}; "
              "echo third")
    run = site.start_run(["sh", "-c", script])
    task_id = site.task_id(run)
    wait_for(lambda: site.stored_offset(task_id) == len(SEQ), "the first output stored")
    site.kill(run.proc)
    spool = site.run_dir(task_id) / "stdout.log"
    os.truncate(spool, keep)
    go1.touch()
    wait_for(lambda: spool.stat().st_size == keep + len(b"second\n"), "the command to go on")

    recover = site.start_cli("recover")
    wait_for(lambda: b"second\n" in site.stored_logs(task_id)[0], "the new output stored")
    site.kill(recover)  # a second crash: the stored offsets must match the file again
    reattach = [r for r in reasons(site, task_id) if r.startswith("reattached")]
    assert len(reattach) == 1 and "stdout.log" in reattach[0], reattach
    assert "read again from its start" in reattach[0], reattach
    go2.touch()
    site.recover()

    record, _ = site.read_task(task_id)
    assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0)
    assert site.stored_logs(task_id) == (SEQ + SEQ[:keep] + b"second\nthird\n", b"")
    assert_no_process_left(site)


@pytest.mark.parametrize("then", ["finishes", "crashes"])
def test_spool_truncated_under_a_following_orchestrator_is_read_again_from_its_start(
        site: Site, then: str) -> None:
    """stdout.log emptied while `oneshot run` follows the task: what the command writes next
    is stored (not skipped until the file regrows past the old offset); the final reason says
    the file was truncated; and the stored offsets follow the file, so a crash right after
    stores the rest once (the note then dies with the orchestrator that made it)."""
    go1, go2 = site.root / "go1", site.root / "go2"
    script = f"seq 1 2000; {sh_wait_for_file(go1)}; echo after; {sh_wait_for_file(go2)}; echo more"
    run = site.start_run(["sh", "-c", script])
    task_id = site.task_id(run)
    wait_for(lambda: site.stored_offset(task_id) == len(SEQ), "the first output stored")
    os.truncate(site.run_dir(task_id) / "stdout.log", 0)
    go1.touch()
    wait_for(lambda: b"after\n" in site.stored_logs(task_id)[0], "the new output stored")
    if then == "crashes":
        site.kill(run.proc)
        go2.touch()
        site.recover()
    else:
        go2.touch()
        assert run.proc.wait(timeout=TIMEOUT) == 0

    record, history = site.read_task(task_id)
    assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0)
    assert site.stored_logs(task_id) == (SEQ + b"after\nmore\n", b"")
    if then == "finishes":
        # (to 0 bytes, or to 6 if "after" was written before the follower looked)
        assert "stdout.log was truncated to" in (history[-1].reason or ""), history
    assert_no_process_left(site)

