"""A workflow killed while its command runs rejoins that command when resumed: never twice.

``run_command`` gives the command task an id derived from the workflow and the step, so the
resumed step finds the task its first run started. The program below is SIGKILLed while its
command (under its shim) waits on a gate file; the same program run again resumes the
workflow, which follows the still-running command (or takes the exit of one that finished
meanwhile). The side-effect file counts how often the command really started.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable.records import TaskKind
from durable.states import TaskState
from tests.crash.script_support import Scripts, effects_of, lines_with
from tests.support import PERSISTED, database_for

pytestmark = pytest.mark.slow

APP = r'''
import sys

import anyio

from durable import workflow
from orchestrator import AsyncOrchestrator, run_command


@workflow
async def build(effects: str, gate: str) -> str:
    script = (f"echo started >> {effects}; while [ ! -e {gate} ]; do sleep 0.05; done; "
              f"echo finished >> {effects}; echo done")
    out = await run_command(["sh", "-c", script])
    return out.stdout_tail.strip()


async def main() -> None:
    async with AsyncOrchestrator() as orch:  # resumes the interrupted workflows
        handles = list(orch.resumed)
        if len(sys.argv) > 1:
            handles.append(await orch.start(build, sys.argv[1], sys.argv[2]))
            print("started", handles[-1].id, flush=True)
        for handle in handles:
            print("result", handle.id, await handle.result(), flush=True)


anyio.run(main)
'''


@pytest.fixture(params=PERSISTED)
def scripts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Scripts]:
    runner = Scripts(database_for(request.param, request, tmp_path), tmp_path)
    yield runner
    runner.kill_all()
    (tmp_path / "gate").touch()  # a command left waiting (a failed test) ends by itself


def kill_while_the_command_runs(scripts: Scripts) -> tuple[Path, Path, Path]:
    """Start the program, SIGKILL it once its command has started; returns the program,
    the effects file and the gate file."""
    app, effects, gate = scripts.root / "app.py", scripts.root / "effects", scripts.root / "gate"
    app.write_text(APP)
    proc = scripts.spawn([sys.executable, str(app), str(effects), str(gate)])
    scripts.wait_until("the command to start", lambda: effects_of(effects)["started"] == 1)
    scripts.kill(proc)
    return app, effects, gate


def assert_ran_once(scripts: Scripts, effects: Path, resumed_output: bytes) -> None:
    tasks = [task for task, _, _ in scripts.tasks().values()]
    [flow] = [t for t in tasks if t.kind == TaskKind.WORKFLOW]
    commands = [t for t in tasks if t.kind == TaskKind.COMMAND]
    assert (flow.state, flow.result) == (TaskState.COMPLETED, '"done"')
    assert [(c.state, c.exit_code) for c in commands] == [(TaskState.COMPLETED, 0)]
    assert effects_of(effects) == {"started": 1, "finished": 1}
    assert lines_with(resumed_output, "result") == [["result", flow.id, "done"]]


def test_a_resumed_workflow_follows_its_still_running_command(scripts: Scripts) -> None:
    """The command outlives the killed program; the program run again reattaches to it and
    gets its output when it ends; it started once."""
    app, effects, gate = kill_while_the_command_runs(scripts)
    resumed = scripts.spawn([sys.executable, str(app)])
    # The resumed workflow must be following the command before the gate opens.
    scripts.wait_until("the command to be reattached", lambda: any(
        task.kind == TaskKind.COMMAND and task.attempt == 1 and any(
            "reattached" in (t.reason or "") for t in history)
        for task, _, history in scripts.tasks().values()))
    gate.touch()
    done = scripts.finish(resumed)
    assert done.returncode == 0, done.stderr.decode()
    assert_ran_once(scripts, effects, done.stdout)


def test_a_resumed_workflow_takes_the_exit_of_a_command_that_finished_meanwhile(
        scripts: Scripts) -> None:
    """The command finished while no program ran; the resumed workflow takes its exit status
    and output instead of running it again."""
    app, effects, gate = kill_while_the_command_runs(scripts)
    gate.touch()
    scripts.wait_until("the command to finish", lambda: effects_of(effects)["finished"] == 1)
    done = scripts.python(str(app))
    assert done.returncode == 0, done.stderr.decode()
    assert_ran_once(scripts, effects, done.stdout)
