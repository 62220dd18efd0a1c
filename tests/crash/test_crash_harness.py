"""`oneshot run` SIGKILLed at randomized moments, then `oneshot recover`: nothing lost or doubled.

Each iteration runs a task that prints a known byte pattern to stdout and stderr over ~2 s and
exits with a chosen code, kills the orchestrator at a seeded random moment — before the task
exists, right after its row is committed, while it runs, or frozen (SIGSTOP) until the command
has finished — and restarts with `oneshot recover`. Iterations run in parallel (each on its own
database) once per module; the tests below check what they recorded.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from recovery_helpers import (
    TIMEOUT,
    Site,
    alive,
    kill_verified,
    pattern,
    pattern_command,
    wait_for,
)

from durable.states import TaskState

pytestmark = pytest.mark.slow

SEED = 20250611
COUNT = 20  # lines of output
PAUSE = 0.1  # seconds between lines: ~2 s per task
KINDS = ["early"] * 2 + ["at-row"] * 3 + ["mid"] * 4 + ["frozen"] * 2 + ["after-exit"]
PARALLEL = 4
EXPECTED = pattern(COUNT)


@dataclass(frozen=True)
class Plan:
    index: int
    kind: str
    delay: float
    code: int


@dataclass
class Outcome:
    plan: Plan
    landed: str = ""  # where the kill landed: before-task, before-launch, running, after-exit
    run_code: int | None = None
    task_id: str | None = None
    state: TaskState | None = None
    exit_code: int | None = None
    transitions: list[tuple[str | None, str]] = field(default_factory=list)
    stdout: bytes = b""
    stderr: bytes = b""
    starts: list[tuple[int, int, int]] = field(default_factory=list)  # pid, pgid, start time
    problems: list[str] = field(default_factory=list)  # CLI calls that failed
    survivors: list[int] = field(default_factory=list)  # killed at the end: leaks


def plans() -> list[Plan]:
    rng = random.Random(SEED)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    result = []
    for index, kind in enumerate(kinds):
        delay = {"early": rng.uniform(0.0, 0.4), "at-row": 0.0,
                 "mid": rng.uniform(0.0, COUNT * PAUSE), "frozen": rng.uniform(0.0, 1.5),
                 "after-exit": 0.0}[kind]
        result.append(Plan(index, kind, delay, rng.choice([0, 1, 3, 7, 42])))
    return result


def only_task(site: Site) -> str | None:
    rows = site.query("SELECT id FROM tasks")
    return rows[0][0] if rows else None


def spool_files(site: Site, name: str) -> list[Path]:
    return list(site.spool.glob(f"*/*/{name}")) if site.spool.exists() else []


def kill_at_random(site: Site, plan: Plan, proc: subprocess.Popen[bytes]) -> str:
    """Kill the orchestrator as the plan says; returns where the kill landed."""
    if plan.kind == "early":
        time.sleep(plan.delay)
    elif plan.kind == "after-exit":
        proc.wait(timeout=TIMEOUT)
    else:
        wait_for(lambda: only_task(site) or proc.poll() is not None, "the task row")
        time.sleep(plan.delay)
        if plan.kind == "frozen":
            proc.send_signal(signal.SIGSTOP)  # the command goes on; nobody records its end
            with contextlib.suppress(AssertionError):  # stopped before the launch: no shim
                wait_for(lambda: spool_files(site, "started.json"), "the shim", timeout=1.0)
            if spool_files(site, "started.json"):
                wait_for(lambda: spool_files(site, "exit.json"), "the command to finish")
    finished_before = proc.poll() is not None or bool(spool_files(site, "exit.json"))
    site.kill(proc)
    task_id = only_task(site)
    if finished_before:
        return "after-exit"
    if task_id is None:
        return "before-task"
    return "running" if site.handle_row(task_id) or spool_files(site, "started.json") \
        else "before-launch"


def run_iteration(root: Path, token: str, plan: Plan) -> Outcome:
    """One run killed as planned, then recovered; what it left, in an Outcome."""
    site = Site(root / f"it{plan.index:02d}", f"{token}-{plan.index}")
    try:
        outcome = _run_iteration(site, plan)
    except BaseException:
        site.close()
        raise
    outcome.survivors += site.close()  # anything else carrying the token: shims included
    return outcome


def _run_iteration(site: Site, plan: Plan) -> Outcome:
    outcome = Outcome(plan)
    side = site.root / "starts"
    run = site.start_run(pattern_command(side, plan.code, COUNT, PAUSE))
    outcome.landed = kill_at_random(site, plan, run.proc)
    outcome.run_code = run.proc.returncode
    outcome.task_id = only_task(site)
    if outcome.task_id is not None:
        site.recover()
        streams = {name: site.start_cli("logs", outcome.task_id, "--raw", "--stream", name)
                   for name in ("stdout", "stderr")}
        out = {name: proc.communicate(timeout=TIMEOUT) for name, proc in streams.items()}
        outcome.stdout, outcome.stderr = out["stdout"][0], out["stderr"][0]
        outcome.problems += [f"logs --stream {name}: exit {streams[name].returncode}: "
                             f"{err.decode(errors='replace')}" for name, (_, err) in out.items()
                             if streams[name].returncode != 0]
        record, history = site.read_task(outcome.task_id)
        outcome.state, outcome.exit_code = record.state, record.exit_code
        outcome.transitions = [(t.from_state, t.to_state) for t in history]
    if side.exists():
        outcome.starts = [(int(pid), int(pgid), int(start)) for pid, pgid, start in
                          (line.split() for line in side.read_text().splitlines())]
    for pid, pgid, start in outcome.starts:
        if alive(pid, start):  # the very process that started, not a reused pid
            outcome.survivors.append(pid)
            kill_verified(pid, start, group=pgid == pid)
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    root = tmp_path_factory.mktemp("harness")
    token = f"harness-{os.getpid()}-{time.time_ns()}"
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda plan: run_iteration(root, token, plan), plans()))


def test_kills_land_before_the_start_while_running_and_after_the_exit(
        outcomes: list[Outcome]) -> None:
    """The randomized kills cover every phase of a task's life."""
    landed = collections.Counter(o.landed for o in outcomes)
    assert landed["before-task"] + landed["before-launch"] >= 1, landed
    assert landed["running"] >= 3, landed
    assert landed["after-exit"] >= 2, landed


def test_a_task_killed_before_it_was_stored_never_runs(outcomes: list[Outcome]) -> None:
    """No task row, no command: nothing ran behind the database's back."""
    for o in outcomes:
        if o.task_id is None:
            assert o.starts == [], o.plan


def test_stored_output_is_the_exact_pattern(outcomes: list[Outcome]) -> None:
    """`oneshot logs --raw` gives back stdout and stderr byte for byte: no gap, no duplicate."""
    for o in outcomes:
        if o.task_id is not None:
            assert (o.stdout, o.stderr) == EXPECTED, (o.plan, o.landed, o.problems)


def test_real_exit_code_is_recorded(outcomes: list[Outcome]) -> None:
    """The task ends COMPLETED (code 0) or FAILED with the command's own exit code."""
    for o in outcomes:
        if o.task_id is None:
            continue
        expected = TaskState.COMPLETED if o.plan.code == 0 else TaskState.FAILED
        assert (o.state, o.exit_code) == (expected, o.plan.code), (o.plan, o.landed)
        if o.plan.kind == "after-exit":
            assert o.run_code == o.plan.code


def test_each_transition_is_recorded_once(outcomes: list[Outcome]) -> None:
    """History is one unbroken chain: no move repeated except through the one recovery, one
    ending, and the command started exactly once."""
    for o in outcomes:
        if o.task_id is None:
            continue
        chain = o.transitions
        assert chain[0] == (None, TaskState.CREATED), chain
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), chain
        assert [TaskState(to).is_terminal for _, to in chain].count(True) == 1, chain
        assert TaskState(chain[-1][1]).is_terminal, chain
        recoveries = [k for k, (_, to) in enumerate(chain) if to is TaskState.RECOVERING]
        assert len(recoveries) <= 1, chain  # one `oneshot recover`, one takeover
        for segment in (chain[:recoveries[0]], chain[recoveries[0]:]) if recoveries else [chain]:
            assert len(set(segment)) == len(segment), chain  # a move repeats only via recovery
        assert len(o.starts) == 1, (o.plan, o.starts)


def test_no_command_outlives_its_recovery(outcomes: list[Outcome]) -> None:
    """Every command that started is gone once its task has ended."""
    assert [o.survivors for o in outcomes if o.survivors] == []
