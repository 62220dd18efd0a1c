"""Backups, integrity checks and repair, on real SQLite files, through the library and the CLI.

The CLI runs as the installed ``oneshot`` script in a subprocess with ``ONESHOT_DATABASE__URL``
pointing at a file under ``tmp_path``; independent commands run at once (start-up dominates).
"""

from __future__ import annotations

import contextlib
import io
import os
import pty
import random
import select
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from config import OneshotSettings, load_settings
from durable.backup import BACKUP_NAME, backup_sqlite, periodic_backup, rotate
from durable.engine import ConnectionOptions
from durable.persistence import PersistenceManager
from durable.states import TaskState
from orchestrator.cli.backup import periodic_backup_jobs
from orchestrator.orchestrator import AsyncOrchestrator
from orchestrator.progress import ProgressBar
from tests.support import assert_clean_error, damage_log_pages, oneshot_script

TIMEOUT = 30.0
DAMAGED = "not a usable SQLite database"
PRINT_FOR_A_SECOND = ["sh", "-c", "i=0; while [ $i -lt 50 ]; do echo line $i; i=$((i+1)); "
                                  "sleep 0.02; done"]



class Cli:
    """Runs ``oneshot`` against one database file."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "oneshot.db"
        self.env = {**os.environ, "ONESHOT_DATABASE__URL": str(self.db)}
        self.script = oneshot_script()

    def __call__(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.many(args)[0]

    def many(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[bytes]]:
        procs = [(command, subprocess.Popen(
            [self.script, *command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=self.tmp_path, env=self.env)) for command in commands]
        done = []
        for command, proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
        return done


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def settings_for(db: Path, **overrides: object) -> OneshotSettings:
    return load_settings(overrides={"database.url": str(db), "database.synchronous": "NORMAL",
                                    **overrides})


def options_for(db: Path) -> ConnectionOptions:
    return ConnectionOptions(url=settings_for(db).database.url, synchronous="NORMAL")


def make_history(db: Path, *argvs: list[str]) -> list[str]:
    """Run each command to its end through the library; their task ids."""

    async def main() -> list[str]:
        async with AsyncOrchestrator(settings_for(db)) as orch:
            handles = [await orch.submit(argv) for argv in argvs]
            with anyio.fail_after(TIMEOUT):
                for handle in handles:
                    await handle.outcome()
            return [handle.id for handle in handles]

    return anyio.run(main)


def row_counts(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                for name in names}


def integrity(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]


# --- backup -------------------------------------------------------------------------------


def test_backup_while_tasks_write_is_consistent_and_passes_integrity_check(
        tmp_path: Path) -> None:
    """Backups taken while tasks print (the writer committing) open, check ok, match counts."""
    db = tmp_path / "oneshot.db"
    settings = settings_for(db, **{"logs.flush_interval": 0.02})
    steps: list[tuple[int, int]] = []
    backups: list[Path] = []

    async def main() -> dict[str, bytes]:
        async with AsyncOrchestrator(settings) as orch:
            handles = [await orch.submit(PRINT_FOR_A_SECOND) for _ in range(3)]
            with anyio.fail_after(TIMEOUT):
                while (await orch.store.log_size(handles[0].id))[0] < 3:
                    await anyio.sleep(0.01)
                for n in range(4):
                    assert not handles[0].done  # still printing: the writer is busy
                    target = tmp_path / f"copy{n}.db"
                    result = await anyio.to_thread.run_sync(lambda t=target: backup_sqlite(
                        options_for(db), t, pages_per_step=1,
                        progress=lambda done, total: steps.append((done, total))))
                    assert result.check == ("ok",)
                    assert result.counts == row_counts(target)  # the source's, at the snapshot
                    backups.append(target)
                    await anyio.sleep(0.1)
                for handle in handles:
                    await handle.outcome()
            return {h.id: b"".join(f.data for f in await orch.store.read_logs(h.id))
                    for h in handles}

    final = anyio.run(main)
    assert len(steps) > len(backups)  # several steps per copy, each reported
    assert all(0 <= done <= total for done, total in steps)
    counts = [row_counts(path)["log_fragments"] for path in backups]
    assert counts == sorted(counts) and counts[0] < row_counts(db)["log_fragments"]
    for path in backups:
        assert integrity(path) == ["ok"]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            for task_id, output in final.items():
                seqs = [r[0] for r in conn.execute(
                    "SELECT seq FROM log_fragments WHERE task_id = ? ORDER BY seq", (task_id,))]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True
                copied = b"".join(r[0] for r in conn.execute(
                    "SELECT data FROM log_fragments WHERE task_id = ? ORDER BY seq", (task_id,)))
                assert output.startswith(copied)  # a prefix of what the task printed
                state = conn.execute("SELECT state FROM tasks WHERE id = ?",
                                     (task_id,)).fetchone()[0]
                last = conn.execute("SELECT to_state FROM task_states WHERE task_id = ? "
                                    "ORDER BY id DESC LIMIT 1", (task_id,)).fetchone()[0]
                assert state == last  # the task row and its history agree in the copy


def test_backup_command_writes_a_private_single_file_matching_the_source(cli: Cli) -> None:
    """`db backup PATH`: mode 0600, no -wal beside it, same rows; path on stdout, no progress."""
    make_history(cli.db, ["echo", "one"], ["sh", "-c", "echo two >&2"])
    target = cli.tmp_path / "backups" / "copy.db"
    proc = cli("db", "backup", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == str(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not Path(f"{target}-wal").exists() and not Path(f"{target}-journal").exists()
    assert integrity(target) == ["ok"]
    assert row_counts(target) == row_counts(cli.db)
    assert row_counts(target)["tasks"] == 2
    err = proc.stderr.decode()
    assert "\x1b" not in err and "Backing up" not in err  # not a terminal: no progress bar
    assert err.count("\n") == 1 and "integrity_check ok" in err


def test_backup_refuses_an_existing_file_unless_forced(cli: Cli) -> None:
    """An existing PATH is kept (exit 1) unless --force; a directory gets a timestamped file."""
    make_history(cli.db, ["true"])
    target = cli.tmp_path / "copy.db"
    target.write_text("keep me")
    refused, forced_dir = cli.many(("db", "backup", str(target)),
                                   ("db", "backup", str(cli.tmp_path)))
    assert "exists" in assert_clean_error(refused)
    assert target.read_text() == "keep me"
    assert forced_dir.returncode == 0, forced_dir.stderr
    assert BACKUP_NAME.match(Path(forced_dir.stdout.decode().strip()).name)
    forced = cli("db", "backup", "--force", str(target))
    assert forced.returncode == 0, forced.stderr
    assert integrity(target) == ["ok"]


def test_backup_of_a_damaged_database_fails_and_leaves_no_file(cli: Cli) -> None:
    """A database whose pages are garbage: the copy fails verification; nothing is left."""
    make_history(cli.db, ["sh", "-c", "seq 1 30000"])
    damage_log_pages(cli.db)
    target = cli.tmp_path / "out" / "copy.db"
    line = assert_clean_error(cli("db", "backup", str(target)))
    assert "damaged" in line or DAMAGED in line
    assert list(target.parent.iterdir()) == []


def test_backup_shows_a_progress_bar_on_a_terminal(cli: Cli) -> None:
    """With stderr on a terminal, `db backup` draws a progress bar there."""
    make_history(cli.db, ["true"])
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([cli.script, "db", "backup", str(cli.tmp_path / "copy.db")],
                            stdin=secondary, stdout=subprocess.PIPE, stderr=secondary,
                            env={**cli.env, "COLUMNS": "100"})
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=TIMEOUT) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert b"Backing up" in seen and b"pages" in seen


def test_progress_bar_is_silent_off_a_terminal_and_draws_on_one() -> None:
    """ProgressBar writes nothing to a non-terminal console, and a bar to a terminal one."""
    for terminal in (False, True):
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=80)
        with ProgressBar("Exporting", total=None, unit="rows", console=console) as bar:
            assert bar.enabled is terminal
            bar.update(5, total=10)
            bar.advance(5)
        assert ("Exporting" in out.getvalue()) is terminal
        assert (out.getvalue() == "") is not terminal


# --- periodic backups ---------------------------------------------------------------------


def test_rotation_keeps_the_newest_backups_and_nothing_else_is_touched(tmp_path: Path) -> None:
    """periodic_backup names files by UTC time and keeps the newest N; other files stay."""
    db = tmp_path / "oneshot.db"
    make_history(db, ["true"])
    directory = tmp_path / "backups"
    directory.mkdir()
    (directory / "notes.txt").write_text("mine")
    start = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    for n in range(5):
        result, removed = periodic_backup(options_for(db), directory, 3,
                                          now=start + timedelta(hours=n))
        assert result.path.name == f"oneshot-20250102-0{3 + n}0405.db"
        assert len(removed) == (1 if n >= 3 else 0)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["notes.txt", "oneshot-20250102-050405.db", "oneshot-20250102-060405.db",
                     "oneshot-20250102-070405.db"]
    assert stat.S_IMODE((directory / names[1]).stat().st_mode) == 0o600


def test_rotation_orders_same_second_backups_by_their_suffix(tmp_path: Path) -> None:
    """Backups within one second get -N suffixes and rotate in the order they were made."""
    db = tmp_path / "oneshot.db"
    make_history(db, ["true"])
    now = datetime(2025, 6, 1, tzinfo=UTC)
    made = [periodic_backup(options_for(db), tmp_path / "b", 10, now=now)[0].path
            for _ in range(4)]
    assert [p.name for p in made] == ["oneshot-20250601-000000.db", "oneshot-20250601-000000-1.db",
                                      "oneshot-20250601-000000-2.db",
                                      "oneshot-20250601-000000-3.db"]
    assert rotate(tmp_path / "b", 2) == made[:2]
    assert sorted((tmp_path / "b").iterdir()) == sorted(made[2:])


def test_worker_backup_job_follows_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """ONESHOT_BACKUP__* set the worker's job: interval, directory, keep; none by default."""
    db = tmp_path / "oneshot.db"
    make_history(db, ["true"])
    assert periodic_backup_jobs(settings_for(db)) == []
    monkeypatch.setenv("ONESHOT_BACKUP__INTERVAL_HOURS", "0.5")
    monkeypatch.setenv("ONESHOT_BACKUP__DIRECTORY", str(tmp_path / "nightly"))
    monkeypatch.setenv("ONESHOT_BACKUP__KEEP", "2")
    (job,) = periodic_backup_jobs(settings_for(db))
    assert job.name == "backup" and job.interval == 1800.0

    async def run_job_three_times() -> None:
        for _ in range(3):
            await job.run()

    anyio.run(run_job_three_times)
    kept = sorted((tmp_path / "nightly").iterdir())
    assert len(kept) == 2 and all(BACKUP_NAME.match(p.name) for p in kept)
    assert all(integrity(p) == ["ok"] for p in kept)
    monkeypatch.delenv("ONESHOT_BACKUP__DIRECTORY")
    (job,) = periodic_backup_jobs(settings_for(db))
    anyio.run(job.run)
    assert len(list((tmp_path / "oneshot.db-backups").iterdir())) == 1


def test_a_failing_periodic_backup_does_not_raise(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's job reports a failure and returns: the worker keeps running."""
    db = tmp_path / "oneshot.db"
    make_history(db, ["true"])
    (tmp_path / "file").write_text("a file, not a directory")
    monkeypatch.setenv("ONESHOT_BACKUP__INTERVAL_HOURS", "1")
    monkeypatch.setenv("ONESHOT_BACKUP__DIRECTORY", str(tmp_path / "file" / "sub"))
    (job,) = periodic_backup_jobs(settings_for(db))
    anyio.run(job.run)


# --- damaged files ------------------------------------------------------------------------


def damage_tasks_table(db: Path) -> None:
    """Overwrite the root pages of the tasks table and its indexes (the header stays valid)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pages = [r[0] for r in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'tasks' AND rootpage > 0")]
    rng = random.Random(7)
    with db.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * 4096)
            file.write(rng.randbytes(4096))


def truncate_to_half(db: Path) -> None:
    with db.open("r+b") as file:
        file.truncate(db.stat().st_size // 2)


@pytest.fixture
def real_db(cli: Cli) -> Iterator[Path]:
    """A real database with some history (several pages of output)."""
    make_history(cli.db, ["sh", "-c", "seq 1 30000"], ["echo", "hi"])
    yield cli.db


DAMAGE = {
    "random-bytes": lambda db: db.write_bytes(random.Random(1).randbytes(100_000)),
    "text-file": lambda db: db.write_text("name,value\nnot,a database\n"),
    "truncated": truncate_to_half,
    "truncated-in-the-header": lambda db: os.truncate(db, 50),
    "garbage-tasks-pages": damage_tasks_table,
}
COMMANDS = [("ls",), ("show", "last"), ("logs", "last"), ("run", "--", "true"),
            ("db", "upgrade"), ("db", "check")]


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_database_file_is_one_clear_line_and_exit_1_for_every_command(
        cli: Cli, real_db: Path, kind: str) -> None:
    """Random bytes, a text file, a truncated copy, garbage table pages: exit 1, one line."""
    DAMAGE[kind](real_db)
    commands = COMMANDS
    if kind == "garbage-tasks-pages":  # at head already: upgrade has nothing to read or do
        commands = [c for c in COMMANDS if c != ("db", "upgrade")]
    for proc in cli.many(*commands):
        line = assert_clean_error(proc, 1)
        assert str(real_db) in line, (proc.args, line)
        assert DAMAGED in line, (proc.args, line)
        assert "--repair" in line


def test_garbage_pages_are_listed_by_db_check(cli: Cli, real_db: Path) -> None:
    """Garbage in the middle of the file: quick_check lists problems; exit 1, one stderr line."""
    damage_log_pages(real_db)
    quick, full = cli.many(("db", "check"), ("db", "check", "--integrity"))
    for proc, mode in ((quick, "quick_check"), (full, "integrity_check")):
        line = assert_clean_error(proc, 1)
        assert str(real_db) in line and "damaged" in line
        report = proc.stdout.decode()
        assert f"{mode}:" in report and "problems" in report.splitlines()[2], report


def test_db_check_integrity_reports_ok_on_a_healthy_database(cli: Cli, real_db: Path) -> None:
    """`db check --integrity` runs integrity_check, prints ok and exits 0."""
    proc, misuse = cli.many(("db", "check", "--integrity"), ("db", "check", "--force"))
    assert proc.returncode == 0, proc.stderr
    report = proc.stdout.decode()
    assert "integrity_check: ok" in report and "foreign keys: 0 problems" in report
    assert "--repair" in assert_clean_error(misuse, 2)


# --- repair -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "truncated-in-the-header",
                                  "garbage-tasks-pages"])
def test_repair_moves_the_damaged_file_aside_and_starts_fresh(
        cli: Cli, real_db: Path, kind: str) -> None:
    """--repair renames the damaged file (bytes intact), says where; the next commands work."""
    DAMAGE[kind](real_db)
    original = real_db.read_bytes()
    proc = cli("db", "check", "--repair")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "Traceback" not in err
    (aside,) = [p for p in real_db.parent.iterdir()
                if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert aside.name.startswith("oneshot.db.corrupt-")
    assert aside.read_bytes() == original
    assert str(aside) in err and "fresh" in err
    ls, check = cli.many(("ls", "--json"), ("db", "check"))
    assert ls.returncode == 0 and ls.stdout.strip() == b"[]", ls.stderr
    assert check.returncode == 0, check.stderr
    assert cli("run", "--", "true").returncode == 0
    assert stat.S_IMODE(real_db.stat().st_mode) == 0o600


def test_repair_moves_the_wal_and_shm_files_with_the_database(cli: Cli, real_db: Path) -> None:
    """The -wal and -shm beside a damaged file move with it (same new name plus suffix)."""
    DAMAGE["random-bytes"](real_db)
    Path(f"{real_db}-wal").write_bytes(b"wal bytes")
    Path(f"{real_db}-shm").write_bytes(b"shm bytes")
    proc = cli("db", "check", "--repair")
    assert proc.returncode == 0, proc.stderr
    aside = sorted(p.name for p in real_db.parent.iterdir() if ".corrupt-" in p.name)
    assert len(aside) == 3 and aside[1:] == [aside[0] + "-shm", aside[0] + "-wal"], aside
    assert (real_db.parent / aside[2]).read_bytes() == b"wal bytes"
    assert all(name in proc.stdout.decode() for name in aside)


def test_repair_refuses_a_healthy_database_unless_forced(cli: Cli, real_db: Path) -> None:
    """--repair on a database that passes the check: exit 1, nothing moved; --force moves it."""
    before = row_counts(real_db)
    line = assert_clean_error(cli("db", "check", "--repair"), 1)
    assert "nothing to repair" in line and "--force" in line
    assert row_counts(real_db) == before
    assert not [p for p in real_db.parent.iterdir() if ".corrupt-" in p.name]
    forced = cli("db", "check", "--repair", "--force")
    assert forced.returncode == 0, forced.stderr
    (aside,) = [p for p in real_db.parent.iterdir() if ".corrupt-" in p.name]
    assert row_counts(aside) == before
    assert row_counts(real_db)["tasks"] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lock probe is Linux-only")
def test_repair_refuses_while_another_process_has_the_database_open(
        cli: Cli, real_db: Path) -> None:
    """A store open in this process: --repair --force from the CLI refuses, naming our pid."""

    async def main() -> subprocess.CompletedProcess[bytes]:
        store = PersistenceManager(options_for(real_db))
        await store.open()
        try:
            await store.list_tasks(states=[TaskState.COMPLETED])
            return await anyio.to_thread.run_sync(cli, "db", "check", "--repair", "--force")
        finally:
            await store.close()

    line = assert_clean_error(anyio.run(main), 1)
    assert f"in use by process {os.getpid()}" in line
    assert not [p for p in real_db.parent.iterdir() if ".corrupt-" in p.name]
