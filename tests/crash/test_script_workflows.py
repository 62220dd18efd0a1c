"""A workflow script as a README user writes it (no ``name=``), SIGKILLed and resumed.

The script (``script_support.FLOW``) runs as ``python flow.py``, ``python -m pkg.flow``, or is
imported by ``oneshot recover|worker --import`` (a module name or a file path): its workflows
are named ``flow.pipeline`` (``pkg.flow.pipeline``) however it was loaded, so each of these
processes finds a run another one started. A process that does not register the name leaves
the run waiting for one that does, and ``@workflow(max_recovery_attempts=N)`` ends a run whose
every resumption kills its process.

Every test runs on a SQLite file and on a PostgreSQL schema of its own.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from script_support import (
    Scripts,
    effects_of,
    is_waiting,
    lines_with,
    transitions,
    write_flow,
)

from durable.records import StepStatus
from durable.states import TaskState
from tests.support import PERSISTED, database_for, oneshot_script

pytestmark = pytest.mark.slow

WAITING = "waiting for a process that registers it"
RESUMED_ONCE = [(None, "CREATED"), ("CREATED", "RUNNING"), ("RUNNING", "RECOVERING"),
                ("RECOVERING", "RUNNING"), ("RUNNING", "COMPLETED")]
"""The history of a run killed once and resumed by a process that knows it."""


@pytest.fixture(params=PERSISTED)
def scripts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scripts]:
    """Child processes on this test's database; none outlives the test."""
    runner = Scripts(database_for(request.param, request, tmp_path), tmp_path)
    yield runner
    runner.kill_all()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def pg_scripts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scripts]:
    """The same, on PostgreSQL only (where several processes recover at once)."""
    runner = Scripts(database_for(request.param, request, tmp_path), tmp_path)
    yield runner
    runner.kill_all()


def start_pipeline_killed_in_step_2(scripts: Scripts, flow: Path, effects: Path,
                                    module: str = "flow") -> str:
    """Start ``pipeline`` with ``python flow.py start``, SIGKILL it inside step 2; its id."""
    task_id = scripts.start_and_kill_in_step([sys.executable, str(flow), "start", str(effects)],
                                             2)
    task, steps, history = scripts.task(task_id)
    assert (task.state, task.workflow, task.attempt) == (TaskState.RUNNING,
                                                         f"{module}.pipeline", 1)
    assert [(s.seq, s.name) for s in steps] == [(0, f"{module}.step")]
    assert transitions(history) == RESUMED_ONCE[:2]
    assert effects_of(effects) == {"step-1": 1, "step-2": 1}
    return task_id


def assert_resumed_once(scripts: Scripts, task_id: str, effects: Path,
                        module: str = "flow") -> None:
    """COMPLETED with 6; steps 1 and 3 ran once, step 2 (killed mid-body) twice."""
    task, steps, history = scripts.task(task_id)
    assert (task.state, task.result, task.workflow) == (TaskState.COMPLETED, "6",
                                                        f"{module}.pipeline")
    assert [(s.seq, s.name, s.status, s.attempts) for s in steps] == [
        (k, f"{module}.step", StepStatus.COMPLETED, 1) for k in range(3)]
    assert effects_of(effects) == {"step-1": 1, "step-2": 2, "step-3": 1}
    assert transitions(history) == RESUMED_ONCE
    assert history[2].reason is not None and history[2].reason.startswith("owner ")
    assert history[3].reason == "resumed from checkpoints"


def test_the_script_run_again_resumes_its_killed_workflow(scripts: Scripts) -> None:
    """`python flow.py start` killed in step 2; `python flow.py` (no argument) resumes it."""
    flow = write_flow(scripts.root / "flow.py")
    effects = scripts.root / "effects"
    task_id = start_pipeline_killed_in_step_2(scripts, flow, effects)

    again = scripts.python(str(flow))
    assert again.returncode == 0, again.stderr.decode()
    assert lines_with(again.stdout, "resumed") == [["resumed", task_id]]
    assert lines_with(again.stdout, "ended") == [["ended", task_id, "COMPLETED"]]
    assert_resumed_once(scripts, task_id, effects)


@pytest.mark.parametrize("how", ["absolute-path", "module-name"])
def test_oneshot_recover_imports_the_script_by_path_or_module(scripts: Scripts,
                                                              how: str) -> None:
    """`oneshot recover --import /abs/flow.py` (from another directory), or `--import flow`
    with its directory on PYTHONPATH, resumes a run `python flow.py` started."""
    flow = write_flow(scripts.root / "app" / "flow.py")
    effects = scripts.root / "effects"
    task_id = start_pipeline_killed_in_step_2(scripts, flow, effects)

    elsewhere = scripts.root / "elsewhere"
    elsewhere.mkdir()
    if how == "absolute-path":
        done = scripts.oneshot("recover", "--import", str(flow), cwd=elsewhere)
    else:
        done = scripts.oneshot("recover", "--import", "flow", cwd=elsewhere,
                               PYTHONPATH=str(flow.parent))
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert f"oneshot: {task_id} COMPLETED" in err
    assert "recovered 1 tasks" in err
    assert_resumed_once(scripts, task_id, effects)


def test_a_package_module_started_with_dash_m_is_recovered_by_its_relative_path(
        scripts: Scripts) -> None:
    """`python -m pkg.flow start` names it `pkg.flow.pipeline`; `oneshot recover --import
    pkg/flow.py` (relative, from the package root) resumes it."""
    write_flow(scripts.root / "pkg" / "flow.py")
    (scripts.root / "pkg" / "__init__.py").write_text("")
    effects = scripts.root / "effects"
    task_id = scripts.start_and_kill_in_step(
        [sys.executable, "-m", "pkg.flow", "start", str(effects)], 2, cwd=scripts.root)
    task, steps, _ = scripts.task(task_id)
    assert (task.state, task.workflow) == (TaskState.RUNNING, "pkg.flow.pipeline")
    assert [s.name for s in steps] == ["pkg.flow.step"]

    done = scripts.oneshot("recover", "--import", "pkg/flow.py", cwd=scripts.root)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert f"oneshot: {task_id} COMPLETED" in err
    assert_resumed_once(scripts, task_id, effects, module="pkg.flow")


def test_a_recover_that_does_not_know_the_workflow_leaves_it_waiting(scripts: Scripts) -> None:
    """`oneshot recover` without --import: exit 0, the run RECOVERING without an owner and
    the reason shown by `ls` and `show`; a second recover writes nothing; then the script run
    again takes it over and completes it."""
    flow = write_flow(scripts.root / "flow.py")
    effects = scripts.root / "effects"
    task_id = start_pipeline_killed_in_step_2(scripts, flow, effects)

    first = scripts.oneshot("recover")
    assert first.returncode == 0, first.stderr.decode()
    assert "recovered 0 tasks" in first.stderr.decode()
    assert (f"workflow task {task_id} (flow.pipeline) waits for a process that registers it"
            in first.stderr.decode())
    task, _, history = scripts.task(task_id)
    assert (task.state, task.owner, task.lease_expires_at) == (TaskState.RECOVERING, None, None)
    assert transitions(history) == [*RESUMED_ONCE[:2], ("RUNNING", "RECOVERING")]
    reason = history[-1].reason or ""
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"{WAITING}: workflow 'flow\.pipeline' is not registered in "
                        rf"{host}:\d+:\S+", reason), reason
    assert effects_of(effects) == {"step-1": 1, "step-2": 1}

    shown = scripts.oneshot("show", task_id)
    assert shown.returncode == 0, shown.stderr.decode()
    assert reason in shown.stdout.decode()
    shown_json = scripts.oneshot("show", task_id, "--json")
    assert shown_json.returncode == 0, shown_json.stderr.decode()
    data = json.loads(shown_json.stdout)
    assert (data["state"], data["workflow"]) == ("RECOVERING", "flow.pipeline")
    assert data["transitions"][-1]["reason"] == reason
    listed = scripts.oneshot("ls")
    assert listed.returncode == 0, listed.stderr.decode()
    (row,) = [line for line in listed.stdout.decode().splitlines() if task_id[:12] in line]
    assert WAITING in row, listed.stdout.decode()

    second = scripts.oneshot("recover")
    assert second.returncode == 0, second.stderr.decode()
    assert "recovered 0 tasks" in second.stderr.decode()
    assert scripts.task(task_id)[2] == history  # not one more row

    again = scripts.python(str(flow))
    assert again.returncode == 0, again.stderr.decode()
    assert lines_with(again.stdout, "ended") == [["ended", task_id, "COMPLETED"]]
    task, steps, history = scripts.task(task_id)
    assert (task.state, task.result) == (TaskState.COMPLETED, "6")
    assert [(s.seq, s.name, s.attempts) for s in steps] == [(k, "flow.step", 1)
                                                             for k in range(3)]
    assert effects_of(effects) == {"step-1": 1, "step-2": 2, "step-3": 1}
    assert transitions(history) == [*RESUMED_ONCE[:3], ("RECOVERING", "RECOVERING"),
                                    *RESUMED_ONCE[3:]]
    takeover = history[3].reason or ""
    assert takeover.startswith("workflow 'flow.pipeline' is registered here; recovered by "), \
        takeover


def test_a_worker_without_the_module_leaves_the_run_waiting(scripts: Scripts) -> None:
    """`oneshot worker` (no --import) started after the kill: the run waits RECOVERING,
    unowned, and is not ended by its periodic scans; the worker stops cleanly on SIGTERM;
    `oneshot recover --import flow.py` then completes it."""
    flow = write_flow(scripts.root / "flow.py")
    effects = scripts.root / "effects"
    task_id = start_pipeline_killed_in_step_2(scripts, flow, effects)

    with (scripts.root / "worker.log").open("wb") as log:
        worker = scripts.spawn([oneshot_script(), "worker"], stdout=log,
                               ONESHOT_WORKER__LEASE_SECONDS="1")
    scripts.wait_until("the run to wait", lambda: is_waiting(scripts.task(task_id)[0]))
    _, _, history = scripts.task(task_id)
    assert transitions(history) == [*RESUMED_ONCE[:2], ("RUNNING", "RECOVERING")]
    assert f":{worker.pid}:" in (history[-1].reason or ""), history[-1].reason
    time.sleep(1.6)  # three more takeover scans (every lease / 2)
    assert worker.poll() is None, (scripts.root / "worker.log").read_text()
    task, _, still = scripts.task(task_id)
    assert is_waiting(task)
    assert still == history

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, (scripts.root / "worker.log").read_text()
    done = scripts.oneshot("recover", "--import", "flow.py", cwd=scripts.root)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert f"oneshot: {task_id} COMPLETED" in err
    task, steps, history = scripts.task(task_id)
    assert (task.state, task.result) == (TaskState.COMPLETED, "6")
    assert [(s.seq, s.name, s.attempts) for s in steps] == [(k, "flow.step", 1)
                                                             for k in range(3)]
    assert effects_of(effects) == {"step-1": 1, "step-2": 2, "step-3": 1}
    assert transitions(history)[-3:] == [("RECOVERING", "RECOVERING"),
                                         ("RECOVERING", "RUNNING"), ("RUNNING", "COMPLETED")]


def run_poison_rounds(scripts: Scripts, processes: int) -> tuple[str, str, list[list[int]]]:
    """Start ``poison`` (it dies) while a ``pipeline`` is paused in step 2, kill the pipeline,
    then run ``processes`` copies of `python flow.py` at once, round after round, until a round
    ends with every process exiting 0. Returns the ids and the exit codes of each round."""
    flow = write_flow(scripts.root / "flow.py")
    env = {"ONESHOT_RECOVERY__MAX_ATTEMPTS": "10"}
    marker = scripts.root / "pipeline.marker"
    pipeline = scripts.spawn([sys.executable, str(flow), "start", str(scripts.root / "effects")],
                             FLOW_PAUSE="in-2", FLOW_MARKER=str(marker), **env)
    scripts.wait_until("the pipeline to pause", marker.exists)
    # The pipeline's owner is alive: the poison's process does not resume it.
    poisoned = scripts.python(str(flow), "poison", str(scripts.root / "poison.effects"), **env)
    assert poisoned.returncode == -signal.SIGKILL, poisoned.stderr.decode()
    ((_, poison_id),) = lines_with(poisoned.stdout, "started")
    scripts.kill(pipeline)
    assert pipeline.stdout is not None
    ((_, pipeline_id),) = lines_with(pipeline.stdout.read(), "started")
    assert effects_of(scripts.root / "poison.effects") == {"poison": 1}

    rounds: list[list[int]] = []
    for _ in range(8):
        procs = [scripts.spawn([sys.executable, str(flow)], **env) for _ in range(processes)]
        done = [scripts.finish(proc) for proc in procs]
        rounds.append([proc.returncode for proc in done])
        for proc in done:
            assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()
        if all(code == 0 for code in rounds[-1]):
            return poison_id, pipeline_id, rounds
    pytest.fail(f"no round ended cleanly: {rounds}")


def assert_poison_bounded(scripts: Scripts, poison_id: str, pipeline_id: str) -> None:
    poison, steps, history = scripts.task(poison_id)
    timeline = [(t.from_state, t.to_state, t.worker, t.attempt, t.reason) for t in history]
    assert effects_of(scripts.root / "poison.effects") == {"poison": 2}, timeline
    assert (poison.state, poison.workflow) == (TaskState.FAILED, "flow.poison")
    expected = ("recovery attempts exhausted: 2 runs ended with their process, its "
                "max_recovery_attempts is 2")
    assert history[-1].reason == expected
    assert poison.error is not None and "max_recovery_attempts is 2" in poison.error
    assert steps == []  # the step never returned
    resumed = [t for t in history
               if (t.from_state, t.to_state) == (TaskState.RECOVERING, TaskState.RUNNING)]
    assert len(resumed) == 1

    pipeline, steps, _ = scripts.task(pipeline_id)
    assert (pipeline.state, pipeline.result) == (TaskState.COMPLETED, "6")
    assert [(s.seq, s.name, s.attempts) for s in steps] == [(k, "flow.step", 1)
                                                             for k in range(3)]
    effects = effects_of(scripts.root / "effects")
    assert effects["step-1"] == 1 and effects["step-2"] >= 2 and effects["step-3"] >= 1


def test_a_poison_workflow_ends_after_its_own_max_recovery_attempts(scripts: Scripts) -> None:
    """`@workflow(max_recovery_attempts=2)` whose step kills its process: resumed once (its
    body ran twice in all), then FAILED by the next process — though
    ONESHOT_RECOVERY__MAX_ATTEMPTS is 10 — which also completes the other interrupted run."""
    poison_id, pipeline_id, rounds = run_poison_rounds(scripts, processes=1)
    assert rounds == [[-signal.SIGKILL], [0]]
    assert_poison_bounded(scripts, poison_id, pipeline_id)


def test_concurrent_recoverers_run_a_poison_workflow_no_more_than_its_limit(
        pg_scripts: Scripts) -> None:
    """Three processes resume at once, each round: still exactly two runs of the poison body
    in all (one process of all the rounds dies of it), then FAILED; the pipeline completes."""
    poison_id, pipeline_id, rounds = run_poison_rounds(pg_scripts, processes=3)
    assert_poison_bounded(pg_scripts, poison_id, pipeline_id)
    assert sum(round.count(-signal.SIGKILL) for round in rounds) == 1, rounds

