"""Recovery of command tasks after an orchestrator crash, against real processes.

Each test runs the installed ``oneshot`` script on a real database (a SQLite file, then a
PostgreSQL schema), SIGKILLs it (and, to make a process "lost", its shim and command through
their verified identities), then runs ``oneshot recover`` / ``oneshot cancel`` and checks the
stored outcome. Every process started is gone at the end of each test (see
:func:`recovery_helpers.site_at`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from recovery_helpers import (
    TIMEOUT,
    Site,
    alive,
    kill_verified,
    pattern,
    pattern_command,
    site_at,
    start_time,
    wait_for,
)

from durable.states import TaskState
from orchestrator.options import RunOptions
from tests.support import Database, persisted_only

pytestmark = [pytest.mark.slow, persisted_only]


@pytest.fixture
def site(tmp_path: Path, database: Database) -> Iterator[Site]:
    """A site in tmp_path on the test's database: a SQLite file, or a PostgreSQL schema."""
    with site_at(tmp_path / "site", database) as site:
        yield site


def once_then_quick(root: Path, name: str) -> list[str]:
    """A command that sleeps long on its first run and ends at once (exit 0) when run again;
    each run appends a line to ``<name>.runs``."""
    marker, runs = root / f"{name}.marker", root / f"{name}.runs"
    script = (f"echo $$ >> {runs}; if [ -e {marker} ]; then echo again; exit 0; fi; "
              f"touch {marker}; echo first; exec sleep 30")
    return ["sh", "-c", script]


def runs_of(root: Path, name: str) -> list[int]:
    path = root / f"{name}.runs"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_lost_command_gets_the_fallback_its_task_chose(site: Site) -> None:
    """`--on-lost` per task: interrupt (also the default), restart (re-run) or fail."""
    modes = {"default": [], "interrupt": ["--on-lost", "interrupt"],
             "restart": ["--on-lost", "restart"], "fail": ["--on-lost", "fail"]}
    ids = site.orphan_runs({name: (once_then_quick(site.root, name), options)
                            for name, options in modes.items()})
    for task_id in ids.values():
        site.lose(task_id)
    site.recover()

    for name in ("default", "interrupt"):
        record, history = site.read_task(ids[name])
        assert record.state is TaskState.INTERRUPTED, name
        assert record.error is not None and "vanished" in record.error
        assert [t.to_state for t in history][-2:] == [TaskState.RECOVERING,
                                                      TaskState.INTERRUPTED]
        assert len(runs_of(site.root, name)) == 1
    failed, _ = site.read_task(ids["fail"])
    assert failed.state is TaskState.FAILED and failed.exit_code is None
    assert failed.error is not None and "vanished" in failed.error
    restarted, history = site.read_task(ids["restart"])
    assert (restarted.state, restarted.exit_code, restarted.attempt) == (
        TaskState.COMPLETED, 0, 2)
    assert [t.to_state for t in history][-4:] == [
        TaskState.RECOVERING, TaskState.CREATED, TaskState.RUNNING, TaskState.COMPLETED]
    assert history[-3].reason is not None and history[-3].reason.startswith("restart:")
    assert len(runs_of(site.root, "restart")) == 2
    assert site.logs(ids["restart"], "stdout") == b"first\nagain\n"  # both attempts


@pytest.mark.parametrize("mode", ["restart", "fail"])
def test_missing_process_setting_chooses_the_fallback_of_tasks_without_one(
        site: Site, mode: str) -> None:
    """ONESHOT_RECOVERY__MISSING_PROCESS applies unless the task has its own `on_lost`."""
    ids = site.orphan_all({
        "plain": (once_then_quick(site.root, "plain"), RunOptions()),
        "own": (once_then_quick(site.root, "own"), RunOptions(on_lost="interrupt")),
    })
    for task_id in ids.values():
        site.lose(task_id)
    site.recover(ONESHOT_RECOVERY__MISSING_PROCESS=mode)

    plain, _ = site.read_task(ids["plain"])
    own, _ = site.read_task(ids["own"])
    if mode == "restart":
        assert (plain.state, plain.attempt) == (TaskState.COMPLETED, 2)
        assert len(runs_of(site.root, "plain")) == 2
    else:
        assert (plain.state, plain.attempt) == (TaskState.FAILED, 1)
        assert plain.error is not None and "vanished" in plain.error
    assert own.state is TaskState.INTERRUPTED
    assert len(runs_of(site.root, "own")) == 1


def test_restart_stops_at_the_recovery_attempt_limit(site: Site) -> None:
    """With ONESHOT_RECOVERY__MAX_ATTEMPTS=2 a command lost twice ends FAILED, exhausted."""
    command = ["sh", "-c", f"echo $$ >> {site.root / 'runs'}; exec sleep 30"]
    limit = {"ONESHOT_RECOVERY__MAX_ATTEMPTS": "2"}
    task_id = site.orphan_all({"task": (command, RunOptions(on_lost="restart"))})["task"]
    site.lose(task_id)

    recover = site.start_cli("recover", **limit)  # restarts it as attempt 2, and follows it
    wait_for(lambda: site.running_with_handle(task_id, attempt=2), "the restart")
    site.kill(recover)
    site.lose(task_id)
    site.recover(**limit)

    record, history = site.read_task(task_id)
    assert record.state is TaskState.FAILED and record.attempt == 2
    assert record.error is not None and "recovery attempts exhausted" in record.error
    assert [t.to_state for t in history].count(TaskState.RECOVERING) == 2
    assert len((site.root / "runs").read_text().split()) == 2


def _point_at(site: Site, task_id: str, decoy: int) -> None:
    """Make the stored handle and started.json name ``decoy`` with the old start times."""
    started = site.started(task_id)
    assert start_time(decoy) not in (started["pid_start"], started["shim_start"])
    started.update(pid=decoy, shim_pid=decoy, pgid=decoy)
    (site.run_dir(task_id) / "started.json").write_text(json.dumps(started))
    site.execute("UPDATE process_handles SET pid = ?, shim_pid = ?, pgid = ? WHERE task_id = ?",
                 decoy, decoy, decoy, task_id)


def test_reused_pid_is_neither_adopted_nor_signalled(site: Site) -> None:
    """A live process with a recorded pid but another start time is left alone (recover and
    cancel), and the task gets the fallback."""
    ids = site.orphan_all({"recovered": (["sleep", "30"], RunOptions()),
                           "cancelled": (["sleep", "30"], RunOptions())})
    decoys = {name: subprocess.Popen(["sleep", "60"], start_new_session=True) for name in ids}
    try:
        for name, task_id in ids.items():
            site.lose(task_id)
            _point_at(site, task_id, decoys[name].pid)
        cancel = site.cli("cancel", ids["cancelled"], ONESHOT_RECOVERY__MISSING_PROCESS="fail")
        assert cancel.returncode == 0, cancel.stderr.decode(errors="replace")
        site.recover(ONESHOT_RECOVERY__MISSING_PROCESS="fail")
        for name, task_id in ids.items():
            assert decoys[name].poll() is None, f"the {name} decoy was signalled"
            record, history = site.read_task(task_id)
            assert record.state is TaskState.FAILED, name
            assert record.error is not None and "vanished" in record.error
            assert not any("reattached" in (t.reason or "") for t in history)
        assert b"FAILED" in cancel.stderr
    finally:
        for decoy in decoys.values():
            decoy.kill()
            decoy.wait(timeout=TIMEOUT)


def test_reboot_is_detected_by_a_changed_boot_id(site: Site) -> None:
    """After a "reboot" (ONESHOT_BOOT_ID_FILE changed, shim and command gone) the task is lost:
    INTERRUPTED for the reboot, or re-run under the new boot id with `--on-lost restart`."""
    before, after = site.root / "boot-before", site.root / "boot-after"
    before.write_text("11111111-1111-1111-1111-111111111111\n")
    after.write_text("22222222-2222-2222-2222-222222222222\n")
    ids = site.orphan_all({
        "interrupted": (once_then_quick(site.root, "interrupted"), RunOptions()),
        "restarted": (once_then_quick(site.root, "restarted"), RunOptions(on_lost="restart")),
    }, ONESHOT_BOOT_ID_FILE=str(before))
    for task_id in ids.values():
        assert site.started(task_id)["boot_id"] == before.read_text().strip()
        site.lose(task_id)
    site.recover(ONESHOT_BOOT_ID_FILE=str(after))

    record, _ = site.read_task(ids["interrupted"])
    assert record.state is TaskState.INTERRUPTED
    assert record.error is not None and "rebooted" in record.error
    record, history = site.read_task(ids["restarted"])
    assert (record.state, record.attempt) == (TaskState.COMPLETED, 2)
    assert "rebooted" in (history[-3].reason or "")
    handle = site.read_handle(ids["restarted"])
    assert handle is not None and handle.boot_id == after.read_text().strip()


def test_corrupt_rows_end_failed_while_the_others_recover(site: Site) -> None:
    """Unknown state, invalid argv JSON, argv not strings: FAILED "corrupt state: ..."; a
    healthy orphan on the same database is still reattached and completes."""
    healthy = ["sh", "-c", "echo one; sleep 1.5; echo two"]
    sleeper = (["sleep", "30"], RunOptions())
    ids = site.orphan_all({"state": sleeper, "json": sleeper, "types": sleeper,
                           "healthy": (healthy, RunOptions())})
    for name in ("state", "json", "types"):
        site.lose(ids[name])
    site.execute("UPDATE tasks SET state = 'BOGUS' WHERE id = ?", ids["state"])
    site.execute("UPDATE tasks SET argv = '[\"sleep\", ' WHERE id = ?", ids["json"])
    site.execute("UPDATE tasks SET argv = '[1, 2]' WHERE id = ?", ids["types"])
    site.recover()

    for name in ("state", "json", "types"):
        (state, error), = site.query("SELECT state, error FROM tasks WHERE id = ?", ids[name])
        assert state == "FAILED", name
        assert error.startswith("corrupt state: "), (name, error)
    assert "BOGUS" in site.query("SELECT error FROM tasks WHERE id = ?", ids["state"])[0][0]
    record, _ = site.read_task(ids["healthy"])
    assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0)
    assert site.stored_logs(ids["healthy"]) == (b"one\ntwo\n", b"")


def test_command_left_without_its_shim_is_killed_before_the_fallback(site: Site) -> None:
    """Shim SIGKILLed, command alive: recover kills the command (verified), then applies the
    fallback; a restart starts only after the old command is dead."""
    ids = site.orphan_all({
        "failed": (once_then_quick(site.root, "failed"), RunOptions(on_lost="fail")),
        "restarted": (once_then_quick(site.root, "restarted"), RunOptions(on_lost="restart")),
    })
    commands = {}
    for name, task_id in ids.items():
        started = site.started(task_id)
        assert kill_verified(started["shim_pid"], started["shim_start"])
        wait_for(lambda s=started: not alive(s["shim_pid"]), "the shim to die")
        assert alive(started["pid"], started["pid_start"])
        commands[name] = started
    site.recover()

    for name, started in commands.items():
        assert not alive(started["pid"], started["pid_start"]), f"{name}: command survived"
    record, _ = site.read_task(ids["failed"])
    assert record.state is TaskState.FAILED
    assert record.error is not None and "shim died" in record.error
    record, history = site.read_task(ids["restarted"])
    assert (record.state, record.attempt) == (TaskState.COMPLETED, 2)
    assert "shim died" in (history[-3].reason or "")
    assert len(runs_of(site.root, "restarted")) == 2


def test_two_recoverers_never_recover_the_same_task(site: Site) -> None:
    """Two `oneshot recover` started together on one database: each orphan is taken over
    once (one RECOVERING transition), a lost one is restarted once, all output stored once."""
    count = 15
    alive_ones = {f"alive{k}": (pattern_command(site.root / f"alive{k}.side", 0, count, 0.1),
                                RunOptions()) for k in range(3)}
    lost_ones = {f"lost{k}": (once_then_quick(site.root, f"lost{k}"), RunOptions(on_lost="restart"))
                 for k in range(2)}
    ids = site.orphan_all({**alive_ones, **lost_ones})
    for name in lost_ones:
        site.lose(ids[name])
    recoverers = [site.start_cli("recover") for _ in range(2)]
    for proc in recoverers:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err.decode(errors="replace")

    for name, task_id in ids.items():
        record, history = site.read_task(task_id)
        assert (record.state, record.exit_code) == (TaskState.COMPLETED, 0), name
        takeovers = [(t.from_state, t.to_state) for t in history
                     if t.to_state is TaskState.RECOVERING]
        assert takeovers == [(TaskState.RUNNING, TaskState.RECOVERING)], name
    for name in alive_ones:
        assert site.stored_logs(ids[name]) == pattern(count)
        assert len((site.root / f"{name}.side").read_text().splitlines()) == 1
    for name in lost_ones:
        assert len(runs_of(site.root, name)) == 2
        assert site.stored_logs(ids[name]) == (b"first\nagain\n", b"")


def test_cancel_stops_a_task_that_another_live_process_runs(site: Site) -> None:
    """`oneshot cancel` stops the shim; the running `oneshot run` records INTERRUPTED and
    exits non-zero."""
    run = site.start_run(["sleep", "30"], "--grace", "1")
    task_id = site.task_id(run)
    wait_for(lambda: site.running_with_handle(task_id), "the command to start")
    started = site.started(task_id)

    cancel = site.cli("cancel", task_id)
    assert cancel.returncode == 0, cancel.stderr.decode(errors="replace")
    assert run.proc.wait(timeout=TIMEOUT) != 0
    record, history = site.read_task(task_id)
    assert record.state is TaskState.INTERRUPTED
    assert TaskState.RECOVERING not in [t.to_state for t in history]  # its runner settled it
    assert "cancel" in (history[-1].reason or "")
    assert not alive(started["pid"], started["pid_start"])
    wait_for(lambda: not alive(started["shim_pid"], started["shim_start"]), "the shim to end")


def test_cancel_after_the_orchestrator_died_stops_the_shim(site: Site) -> None:
    """The orchestrator is SIGKILLed; `oneshot cancel` stops the surviving shim and settles
    the task INTERRUPTED."""
    task_id = site.orphan_all({"task": (["sleep", "30"], RunOptions(grace=1))})["task"]
    started = site.started(task_id)
    assert alive(started["shim_pid"], started["shim_start"])

    cancel = site.cli("cancel", task_id)
    assert cancel.returncode == 0, cancel.stderr.decode(errors="replace")
    record, history = site.read_task(task_id)
    assert record.state is TaskState.INTERRUPTED
    assert [t.to_state for t in history].count(TaskState.RECOVERING) == 1
    assert "cancel" in (history[-1].reason or "")
    assert not alive(started["pid"], started["pid_start"])
    wait_for(lambda: not alive(started["shim_pid"], started["shim_start"]), "the shim to end")


def test_timeout_is_enforced_while_no_orchestrator_runs(site: Site) -> None:
    """`--timeout 1`, orchestrator SIGKILLed: the shim still stops the command on time, and
    recover records FAILED with the timeout reason."""
    limited = RunOptions(timeout=1, grace=1)
    task_id = site.orphan_all({"task": (["sleep", "30"], limited)})["task"]
    started = site.started(task_id)
    exit_file = site.run_dir(task_id) / "exit.json"
    wait_for(exit_file.exists, "the shim to stop the command", timeout=10)
    assert not alive(started["pid"], started["pid_start"])
    assert site.state(task_id) == "RUNNING"  # nobody has looked yet
    site.recover()

    record, _ = site.read_task(task_id)
    assert record.state is TaskState.FAILED
    assert record.error is not None and "timeout" in record.error
    assert record.exit_code == -15


@pytest.mark.parametrize("crashed_in", ["CREATED", "RUNNING"])
def test_task_whose_launch_was_interrupted_runs_again(site: Site, crashed_in: str) -> None:
    """A crash after the CREATED or RUNNING commit but before the launch (no started.json):
    recover runs the command, once."""
    side = site.root / "side"
    task_id = site.queue({"task": (pattern_command(side, 3, 4, 0.0), RunOptions())})["task"]
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=TIMEOUT)
    owner = f"{socket.gethostname()}:{dead.pid}:dead00"
    # What the killed orchestrator had committed: ownership, and maybe the RUNNING intent.
    site.execute("UPDATE tasks SET owner = ?, state = ? WHERE id = ?", owner, crashed_in, task_id)
    if crashed_in == "RUNNING":
        site.execute("INSERT INTO task_states (task_id, from_state, to_state, at, reason, "
                     "worker, attempt) VALUES (?, 'CREATED', 'RUNNING', ?, 'starting', ?, 1)",
                     task_id, time.time(), owner)
    assert not (site.spool / task_id).exists()
    site.recover()

    record, history = site.read_task(task_id)
    assert (record.state, record.exit_code, record.attempt) == (TaskState.FAILED, 3, 1)
    assert [t.to_state for t in history][-4:] == [
        TaskState.RECOVERING, TaskState.CREATED, TaskState.RUNNING, TaskState.FAILED]
    assert "launch was interrupted" in (history[-3].reason or "")
    assert len(side.read_text().splitlines()) == 1
    assert site.stored_logs(task_id) == pattern(4)


def test_a_reattachment_whose_process_was_never_recorded_survives_a_second_crash(
        site: Site) -> None:
    """The first orchestrator died between the launch and recording the process; the one that
    reattaches records it, so when that one dies too, the next recovery reads on from the
    stored offsets: every byte stored once."""
    side = site.root / "side"
    [task_id] = site.orphan_runs(
        {"task": (pattern_command(side, 0, 40, 0.05), [])}).values()
    site.execute("DELETE FROM process_handles WHERE task_id = ?", task_id)
    site.execute("DELETE FROM log_fragments WHERE task_id = ?", task_id)
    first = site.start_cli("recover")
    wait_for(lambda: site.stored_offset(task_id) > 0, "the first recoverer to store output")
    site.kill(first)
    site.recover()
    assert site.state(task_id) == "COMPLETED"
    assert site.stored_logs(task_id) == pattern(40)
    assert len(side.read_text().splitlines()) == 1
