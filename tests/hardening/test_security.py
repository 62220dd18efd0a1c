"""Security: what Oneshot writes is private, commands are run as given and only as submitted,
user text never becomes SQL, and secrets from the environment are never stored or shown.

The CLI runs as a user runs it (the installed script, a real SQLite file) where the process
matters: its umask, its environment, the bytes it leaves on disk. Reads that are not what a
test is about go through click's CliRunner in-process or straight to the file.

Already covered elsewhere, under the default umask: a `db backup` copy and a periodic backup
are 0600 (tests/integration/test_backup.py), a repaired database is 0600; a command whose
launch was interrupted before it started runs once on recovery
(tests/crash/test_recovery.py::test_task_whose_launch_was_interrupted_runs_again).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable.backup import periodic_backup
from durable.engine import ConnectionOptions
from durable.persistence import PersistenceManager
from durable.records import NewTask, TaskKind
from durable.states import TaskState
from orchestrator.cli import cli
from orchestrator.orchestrator import new_task_id
from orchestrator.process import current_boot_id
from tests.crash.recovery_helpers import Site, site_at, wait_for
from tests.support import Database, oneshot_script, sqlite_only

TIMEOUT = 30.0
TASK_LINE = re.compile(rb"oneshot: task ([0-9a-f]{32})")
WAIT_FOR_GO = "touch started; while [ ! -e go ]; do sleep 0.02; done; echo done"
"""A command that says it started, then waits for the test's `go` file."""
TABLES = {"tasks", "task_states", "log_fragments", "step_checkpoints", "process_handles",
          "workers", "alembic_version"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def private_mode(path: Path) -> int:
    """What owner-only means for ``path``: 0700 for a directory, 0600 for a file."""
    return 0o700 if stat.S_ISDIR(path.lstat().st_mode) else 0o600


def clean_env(db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    return {**env, "ONESHOT_DATABASE__URL": str(db), **extra}


def start_with_umask_000(args: list[str], env: dict[str, str], cwd: Path,
                         stderr: Path) -> subprocess.Popen[bytes]:
    """`oneshot ARGS...` started by a shell whose umask lets everyone read and write."""
    with stderr.open("wb") as err:
        return subprocess.Popen(["sh", "-c", 'umask 000; exec "$0" "$@"', oneshot_script(),
                                 *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)


def invoke(args: list[str], env: dict[str, str]) -> Result:
    """The CLI in-process (reads whose process does not matter)."""
    return CliRunner().invoke(cli, args, env=env, prog_name="oneshot")


def tables(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}


# --- files are owner-only, even under umask 000 ----------------------------------------------


@pytest.fixture(scope="module")
def umask_000_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One `oneshot run` under umask 000 on a database in new directories: the modes of
    everything it created, taken while the command runs and again after it ended."""
    root = tmp_path_factory.mktemp("umask")
    db = root / "new" / "private" / "oneshot.db"
    spool = db.with_name("oneshot.db-runs")
    proc = start_with_umask_000(["run", "--", "sh", "-c", WAIT_FOR_GO],
                                clean_env(db), root, root / "run.err")
    try:
        run_dir = wait_for(lambda: next(spool.glob("*/1/started.json"), None),
                           "the shim to start the command").parent
        wait_for((root / "started").exists, "the command to start")
        created = [db.parent.parent, db.parent, db, Path(f"{db}-wal"), Path(f"{db}-shm"),
                   spool, run_dir.parent, run_dir, *run_dir.iterdir()]
        during = {str(path.relative_to(root)): mode(path) for path in created}
        private = {str(path.relative_to(root)): private_mode(path) for path in created}
        (root / "go").touch()
        assert proc.wait(timeout=TIMEOUT) == 0, (root / "run.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    return {"db": db, "root": root, "during": during, "private": private, "after": mode(db)}


def test_database_and_its_wal_and_shm_are_owner_only_under_umask_000(
        umask_000_run: dict[str, Any]) -> None:
    """Under umask 000 the new database directory is 0700 and the database, its -wal and its
    -shm files are 0600, while the command runs and after."""
    during, db = umask_000_run["during"], umask_000_run["db"]
    name = str(db.relative_to(umask_000_run["root"]))
    assert during[str(Path(name).parent)] == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert during[name + suffix] == 0o600, (name + suffix, oct(during[name + suffix]))
    assert umask_000_run["after"] == 0o600


def test_spool_run_directory_and_its_files_are_owner_only_under_umask_000(
        umask_000_run: dict[str, Any]) -> None:
    """A command's own run directory is 0700 and every file Oneshot puts in it (spec,
    started record, lock, output spools) is 0600, even under umask 000."""
    during = umask_000_run["during"]
    run_dir = next(name for name in during if name.endswith("/1"))
    assert during[run_dir] == 0o700
    files = {name: oct(m) for name, m in during.items()
             if name.startswith(run_dir + "/") and not name.endswith("shim.err")}
    assert set(files) >= {f"{run_dir}/{f}" for f in
                          ("spec.json", "started.json", "shim.lock", "stdout.log", "stderr.log")}
    assert set(files.values()) == {oct(0o600)}, files


def test_every_directory_and_file_oneshot_creates_is_owner_only_under_umask_000(
        umask_000_run: dict[str, Any]) -> None:
    """Every directory (0700) and file (0600) created for the database and the spool."""
    private = umask_000_run["private"]
    loose = {name: oct(m) for name, m in umask_000_run["during"].items() if m != private[name]}
    assert loose == {}


def test_backups_are_owner_only_under_umask_000(tmp_path: Path) -> None:
    """`db backup PATH` under umask 000 writes a 0600 copy in a new 0700 directory; a periodic
    backup (the worker's) makes its directory 0700 and its files 0600 too."""
    db = tmp_path / "oneshot.db"
    make_tasks(db, ["one"])
    target = tmp_path / "copies" / "copy.db"
    proc = start_with_umask_000(["db", "backup", str(target)], clean_env(db), tmp_path,
                                tmp_path / "backup.err")
    assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / "backup.err").read_text()
    assert (mode(target.parent), mode(target)) == (0o700, 0o600)
    assert sorted(p.name for p in target.parent.iterdir()) == ["copy.db"]
    previous = os.umask(0)
    try:
        result, _ = periodic_backup(options_for(db), tmp_path / "periodic", keep=2)
    finally:
        os.umask(previous)
    assert (mode(result.path.parent), mode(result.path)) == (0o700, 0o600)


def options_for(db: Path) -> ConnectionOptions:
    return Database("sqlite", f"sqlite+aiosqlite:///{db}").options()


def make_tasks(db: Path, names: list[str], argv: list[str] | None = None) -> list[str]:
    """Queue one command task per name (as `oneshot submit` does); their ids."""

    async def create() -> list[str]:
        store = PersistenceManager(options_for(db))
        await store.open()
        try:
            ids = []
            for name in names:
                task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=name,
                               argv=argv or ["true"], cwd=str(db.parent))
                ids.append((await store.create_task(task, reason="queued")).id)
            return ids
        finally:
            await store.close()

    return anyio.run(create)


# --- commands run as given: no shell, only what was submitted --------------------------------

HOSTILE_ARGS = ["; rm -rf {victim}", "$(touch {pwned}1)", "`touch {pwned}2`", "&& touch {pwned}3",
                "| tee {pwned}4", "*", "$HOME", "'quoted' \"double\"", "\\n", "{{a,b}}"]


def hostile_args(root: Path) -> list[str]:
    return [arg.format(victim=root / "victim", pwned=root / "pwned") for arg in HOSTILE_ARGS]


def assert_nothing_was_interpreted(root: Path) -> None:
    assert (root / "victim" / "keep").read_text() == "still here"
    assert not list(root.glob("pwned*"))


def test_run_passes_shell_metacharacters_literally_and_stores_argv_as_a_json_list(
        tmp_path: Path) -> None:
    """`oneshot run -- echo '; rm -rf DIR' '$(touch F)' ...`: no shell interprets them (the
    directory survives, nothing is created), echo prints them as given, and the row's argv is
    the JSON list of the arguments."""
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep").write_text("still here")
    args = hostile_args(tmp_path)
    proc = subprocess.run([oneshot_script(), "run", "--", "echo", *args], capture_output=True,
                          cwd=tmp_path, env=clean_env(tmp_path / "oneshot.db"), timeout=TIMEOUT,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (" ".join(args) + "\n").encode()
    assert_nothing_was_interpreted(tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / "oneshot.db")) as conn:
        (raw,) = conn.execute("SELECT argv FROM tasks").fetchone()
    assert json.loads(raw) == ["echo", *args]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A SQLite database in tmp_path and the CLI processes on it (none may be left behind)."""
    with site_at(tmp_path / "site") as site:
        yield site


def test_worker_runs_a_queued_task_exactly_with_its_stored_argv(site: Site) -> None:
    """A task queued with hostile arguments is run by `oneshot worker` with exactly its stored
    argv (printed back byte for byte by the command, no shell)."""
    (site.root / "victim").mkdir()
    (site.root / "victim" / "keep").write_text("still here")
    args = hostile_args(site.root)
    submitted = invoke(["submit", "--name", "hostile", "--cwd", str(site.root), "--",
                        "printf", "<%s>", *args], site.env())
    assert submitted.exit_code == 0, submitted.output
    task_id = submitted.stdout.strip()
    worker = site.start_cli("worker")
    wait_for(lambda: site.state(task_id) == "COMPLETED", "the worker to run the task")
    worker.terminate()
    assert worker.wait(timeout=TIMEOUT) == 0
    record, _ = site.read_task(task_id)
    assert record.argv == ["printf", "<%s>", *args]
    assert site.stored_logs(task_id) == ("".join(f"<{a}>" for a in args).encode(), b"")
    assert_nothing_was_interpreted(site.root)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait(timeout=TIMEOUT)
    return proc.pid


def forge_running_task(site: Site, argv: list[str], *, host: str, run_dir: Path) -> str:
    """A row written straight into the database, never submitted: RUNNING, owned by a dead
    orchestrator, with a process handle naming ``run_dir`` on ``host``."""
    task_id, gone, now = new_task_id(), dead_pid(), time.time()
    owner = f"{socket.gethostname()}:{gone}:forged"
    site.execute("INSERT INTO tasks (id, name, kind, argv, cwd, queue, state, created_at, "
                 "updated_at, started_at, attempt, owner, lease_expires_at) VALUES "
                 "(?, 'forged', 'command', ?, ?, 'default', 'RUNNING', ?, ?, ?, 1, ?, ?)",
                 task_id, json.dumps(argv), str(site.root), now, now, now, owner, now - 60)
    for before, after in ((None, "CREATED"), ("CREATED", "RUNNING")):
        site.execute("INSERT INTO task_states (task_id, from_state, to_state, at, reason, "
                     "worker, attempt) VALUES (?, ?, ?, ?, 'forged', ?, 1)",
                     task_id, before, after, now, owner)
    site.execute("INSERT INTO process_handles (task_id, attempt, run_dir, host, boot_id, "
                 "shim_pid, shim_start, pid, pid_start, pgid) VALUES "
                 "(?, 1, ?, ?, ?, ?, 1, ?, 1, ?)",
                 task_id, str(run_dir), host, current_boot_id(), gone, gone, gone)
    return task_id


def forge_lost_process(site: Site) -> Path:
    """A run directory whose ``started.json`` names a shim and a command that are gone (no
    lock held, no exit file), on this machine since its last boot."""
    run_dir = site.root / "forged-run"
    run_dir.mkdir()
    gone = dead_pid()
    (run_dir / "started.json").write_text(json.dumps({
        "schema": 1, "attempt_id": "forged", "boot_id": current_boot_id(), "shim_pid": gone,
        "shim_start": 1, "pid": gone, "pid_start": 1, "pgid": gone, "started_at": time.time()}))
    return run_dir


def interrupt_launch(site: Site, argv: list[str]) -> tuple[str, Path]:
    """A queued task taken by an orchestrator that died between its RUNNING commit and the
    launch (no process handle, nothing started); returns its id and run directory."""
    assert site.db is not None
    task_id = make_tasks(site.db, ["interrupted"], argv)[0]
    owner = f"{socket.gethostname()}:{dead_pid()}:dead"
    site.execute("UPDATE tasks SET owner = ?, state = 'RUNNING' WHERE id = ?", owner, task_id)
    site.execute("INSERT INTO task_states (task_id, from_state, to_state, at, reason, worker, "
                 "attempt) VALUES (?, 'CREATED', 'RUNNING', ?, 'starting', ?, 1)",
                 task_id, time.time(), owner)
    return task_id, site.spool / task_id / "1"


def test_recovery_runs_only_what_was_submitted(site: Site) -> None:
    """`oneshot recover` settles rows inserted straight into the database as RUNNING with a
    process that is gone (its shim dead here, or on another host) by the missing-process
    fallback — INTERRUPTED, their command never run; and a task whose launch was interrupted
    runs again (by design) with the argv stored in the database, never with a `spec.json`
    planted in its run directory."""
    forged_command = ["sh", "-c", f"touch {site.root / 'forged-ran'}"]
    here = forge_running_task(site, forged_command, host=socket.gethostname(),
                              run_dir=forge_lost_process(site))
    elsewhere = forge_running_task(site, forged_command, host="another-host.example",
                                   run_dir=site.root / "nowhere")
    stored, planted = site.root / "stored-ran", site.root / "planted-ran"
    interrupted, run_dir = interrupt_launch(site, ["sh", "-c", f"touch {stored}"])
    run_dir.mkdir(parents=True)
    spec = run_dir / "spec.json"
    spec.write_text(json.dumps({"schema": 1, "attempt_id": "planted", "cwd": str(site.root),
                                "argv": ["sh", "-c", f"touch {planted}"], "env": None}))
    os.utime(spec, (time.time() - 3600, time.time() - 3600))  # no launch in progress

    site.recover()
    for task_id, cause in ((here, "vanished"), (elsewhere, "another-host.example")):
        record, history = site.read_task(task_id)
        assert record.state is TaskState.INTERRUPTED, (task_id, record)
        assert cause in (record.error or "")
        assert TaskState.CREATED not in [t.to_state for t in history[2:]]  # never re-queued
    assert not (site.root / "forged-ran").exists()
    record, _ = site.read_task(interrupted)
    assert (record.state, record.argv) == (TaskState.COMPLETED, ["sh", "-c", f"touch {stored}"])
    assert stored.exists()
    assert not planted.exists()


# --- no SQL is built from user text ----------------------------------------------------------

SQL_TEXT = st.text(st.sampled_from("ab'\"%_\\;-*?[]() =DROP"), max_size=12)
EVIL = ["'; DROP TABLE tasks; --", "%", "_", "a%b_c", "\\", "\\%", '"; DELETE FROM tasks; --',
        "' OR '1'='1", "[]", "*", "?"]


def glob_matches(pattern: str, name: str | None) -> bool:
    """`ls --name` semantics: ``*`` and ``?`` are wildcards, everything else is literal, ASCII
    letters ignore case (as SQLite's LIKE)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return name is not None and re.fullmatch(regex, name, re.IGNORECASE | re.ASCII | re.DOTALL) \
        is not None


@sqlite_only
def test_names_and_name_globs_with_sql_are_stored_and_matched_literally(
        database: Database) -> None:
    """Task names and `--name` globs holding quotes, %, _, backslashes and SQL statements are
    stored as given and filtered literally (only * and ? are wildcards); the tables remain."""
    db = database.sqlite_path
    assert db is not None
    created: dict[str, str] = dict(zip(make_tasks(db, EVIL), EVIL, strict=True))

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(names=st.lists(SQL_TEXT, max_size=3), pattern=SQL_TEXT | st.sampled_from(EVIL))
    def check(names: list[str], pattern: str) -> None:
        created.update(zip(make_tasks(db, names), names, strict=True))

        async def listed() -> list[tuple[str, str | None]]:
            store = PersistenceManager(options_for(db))
            await store.open()
            try:
                return [(r.id, r.name) for r in await store.list_tasks(name=pattern)]
            finally:
                await store.close()

        found = anyio.run(listed)
        assert {task_id for task_id, _ in found} == {
            task_id for task_id, name in created.items() if glob_matches(pattern, name)}
        assert all(created[task_id] == name for task_id, name in found)

    check()
    env = {"ONESHOT_DATABASE__URL": str(db)}
    for evil in EVIL:
        shown = invoke(["ls", "--json", "--limit", "1000", f"--name={evil}"], env)
        assert shown.exit_code == 0, shown.output
        assert {row["name"] for row in json.loads(shown.stdout)} == {
            name for name in created.values() if glob_matches(evil, name)}
        for command in (["show", evil], ["logs", evil], ["cancel", evil]):
            missing = invoke(command, env)
            assert missing.exit_code == 1, (command, missing.output, missing.exception)
            assert missing.stderr.startswith("oneshot: no such task"), missing.stderr
    assert tables(db) >= TABLES
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (len(created),)


# --- secrets from the environment are never stored or shown ----------------------------------


def test_secret_environment_variables_are_never_stored_or_shown(tmp_path: Path) -> None:
    """A task run with MY_API_TOKEN / DB_PASSWORD / ONESHOT_UI__TOKEN in its environment (the
    command uses them, never prints them): their values are nowhere in the database file, its
    -wal and -shm, the spool, nor in what `config`, `show` and `ls` print."""
    db = tmp_path / "oneshot.db"
    secrets = {"MY_API_TOKEN": f"s3cr3t-{uuid.uuid4()}", "DB_PASSWORD": f"pw-{uuid.uuid4()}",
               "ONESHOT_UI__TOKEN": f"ui-token-{uuid.uuid4()}"}
    env = clean_env(db, **secrets)
    uses_them = 'test -n "$MY_API_TOKEN" && test -n "$DB_PASSWORD" && ' + WAIT_FOR_GO
    with (tmp_path / "run.err").open("wb") as err:
        proc = subprocess.Popen([oneshot_script(), "run", "--name", "uses-secrets", "--",
                                 "sh", "-c", uses_them], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: next(tmp_path.glob("oneshot.db-runs/*/1/started.json"), None),
                 "the command to start")
        wait_for((tmp_path / "started").exists, "the command to start")
        while_running = files_holding(tmp_path, secrets.values())
        (tmp_path / "go").touch()
        assert proc.wait(timeout=TIMEOUT) == 0, (tmp_path / "run.err").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
    assert while_running == [], while_running
    assert files_holding(tmp_path, secrets.values()) == []
    cli_env = {**secrets, "ONESHOT_DATABASE__URL": str(db)}
    for args in (["config"], ["config", "--json"], ["show", "last"], ["show", "--json", "last"],
                 ["ls", "--json"], ["ls"], ["logs", "last"]):
        result = invoke(args, cli_env)
        assert result.exit_code == 0, (args, result.output)
        leaked = [name for name, value in secrets.items() if value in result.output]
        assert leaked == [], (args, leaked)
    shown = json.loads(invoke(["config", "--json"], cli_env).stdout)
    assert shown["ui.token"] == {"value": "***", "source": "env ONESHOT_UI__TOKEN"}


def files_holding(root: Path, values: Any) -> list[str]:
    """Every file under ``root`` (the database, its -wal/-shm, the spool) holding a value;
    the run's own stderr capture is the test's, not Oneshot's."""
    needles = [value.encode() for value in values]
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path.name != "run.err":
            data = path.read_bytes()
            found += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return found


def test_custom_secret_patterns_mask_matching_settings_in_config(tmp_path: Path) -> None:
    """ONESHOT_SECRET_PATTERNS='*HOST*,*PORT*' masks ui.host and ui.port in `config` (table and
    JSON); the UI token stays masked without the default patterns; a password given as a
    database URL query parameter is masked like the URL's own password."""
    token = f"tok-{uuid.uuid4()}"
    env = {"ONESHOT_SECRET_PATTERNS": "*HOST*, *PORT*", "ONESHOT_UI__HOST": "10.9.8.7",
           "ONESHOT_UI__PORT": "4321", "ONESHOT_UI__TOKEN": token,
           "ONESHOT_DATABASE__URL": "postgresql://alice:hunter2@db.example/o?password=hunter3"}
    shown = json.loads(invoke(["config", "--json"], env).stdout)
    assert shown["ui.host"]["value"] == shown["ui.port"]["value"] == "***"
    assert shown["ui.token"]["value"] == "***"
    assert shown["secret_patterns"]["value"] == '["*HOST*", "*PORT*"]'
    assert shown["concurrency"]["value"] == "4"  # only what matches is masked
    table = invoke(["config"], env)
    assert table.exit_code == 0
    for text in (table.stdout, json.dumps(shown)):
        for secret in ("10.9.8.7", "4321", token, "hunter2", "hunter3"):
            assert secret not in text, secret
    bad_url = invoke(["--db", "mysql://alice:hunter2@h/db?password=hunter3", "ls"], env)
    assert bad_url.exit_code == 2
    assert "hunter2" not in bad_url.output and "hunter3" not in bad_url.output

