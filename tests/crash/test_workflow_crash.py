"""Workflows SIGKILLed mid-run and resumed by a fresh process: each finished step runs once.

The workflow of ``crash_workflow_app.py`` runs in a child process against a real SQLite file.
The child stops at a chosen point (inside a step's body, before its checkpoint; or right after a
step's checkpoint committed), writes a marker file, and the test SIGKILLs it. A new process then
resumes it (``oneshot recover --import crash_workflow_app``, or ``orch.recover()`` in a child),
and the side-effect file tells how often each step's body really ran.

The ten kill positions run at once, one child each on one database, and one ``oneshot recover``
resumes them all (the per-position tests then check their own run): that keeps the file fast.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from config import load_settings
from durable.persistence import store_from_settings
from durable.records import StepCheckpoint, StepStatus, TaskRecord, Transition
from durable.states import TaskState
from tests.support import oneshot_script

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
APP = HERE / "crash_workflow_app.py"
EXAMPLES = HERE.parent.parent / "examples"
STEP_COUNT = 5
EXPECTED_RESULT = 712345  # crash_workflow_app.SEED with each step's number appended
ALL_ONCE = {f"step-{k}": 1 for k in range(1, STEP_COUNT + 1)}
TIMEOUT = 30.0
POSITIONS = [f"{where}-{k}" for k in range(1, STEP_COUNT + 1) for where in ("in", "after")]

Snapshot = tuple[TaskRecord, list[StepCheckpoint], list[Transition]]



def recover_cli() -> list[str]:
    return [oneshot_script(), "recover", "--import", "crash_workflow_app"]


class Children:
    """Child processes on one database; every one is killed and reaped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "oneshot.db"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.read_state()  # creates and migrates the database before children race for it

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ONESHOT_", "CRASH_"))}
        env.update(ONESHOT_DATABASE__URL=str(self.db), PYTHONPATH=str(HERE))
        env.update(extra)
        return env

    def spawn(self, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=self.env(**extra), cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def start_paused_at(self, pause: str, effects: Path,
                        argv: list[str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a run (or ``argv``) that stops at ``pause``; returns it and its marker."""
        marker = effects.with_suffix(".paused")
        marker.unlink(missing_ok=True)
        argv = argv or [sys.executable, str(APP), "start", str(effects)]
        return self.spawn(argv, CRASH_PAUSE=pause, CRASH_MARKER=str(marker)), marker

    def wait_for(self, proc: subprocess.Popen[bytes], marker: Path) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"child exited {proc.returncode} before writing {marker.name}:\n"
                            f"{out.decode()}{err.decode()}")
            assert time.monotonic() < deadline, f"child never wrote {marker.name}"
            time.sleep(0.02)

    def kill_paused(self, proc: subprocess.Popen[bytes], marker: Path, pause: str, *,
                    reap: bool = True) -> None:
        """Wait until ``proc`` paused at ``pause``, then SIGKILL it (reaped unless told not)."""
        self.wait_for(proc, marker)
        assert marker.read_text() == pause
        self.kill(proc, reap=reap)

    def read_until(self, proc: subprocess.Popen[bytes], text: bytes) -> bytes:
        """Read ``proc``'s stdout until ``text`` appears (bounded by TIMEOUT)."""
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while text not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never printed {text!r}; got {seen!r}"
            ready, _, _ = select.select([proc.stdout], [], [], left)
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if ready and not chunk:
                pytest.fail(f"stdout closed before {text!r}; got {seen!r}")
            seen += chunk
        return seen

    def kill(self, proc: subprocess.Popen[bytes], *, reap: bool = True) -> None:
        """SIGKILL ``proc``; reaped (its pid gone) unless ``reap`` is False (a zombie)."""
        proc.send_signal(signal.SIGKILL)
        if reap:
            proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == -signal.SIGKILL

    def finish(self, argv: list[str], **extra: str) -> subprocess.CompletedProcess[bytes]:
        proc = self.spawn(argv, **extra)
        out, err = proc.communicate(timeout=TIMEOUT)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def read_state(self) -> dict[str, Snapshot]:
        """Every task in the database by id, with its checkpoints and its history."""

        async def read() -> dict[str, Snapshot]:
            store = store_from_settings(load_settings(overrides={"database.url": str(self.db)}))
            await store.open()
            try:
                return {task.id: (task, await store.load_steps(task.id),
                                  await store.history(task.id))
                        for task in await store.list_tasks()}
            finally:
                await store.close()

        return anyio.run(read)

    def only_task(self) -> Snapshot:
        (state,) = self.read_state().values()
        return state

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def effects_of(path: Path) -> collections.Counter[str]:
    return collections.Counter(path.read_text().splitlines())


def assert_completed(state: Snapshot, *, recoveries: int) -> None:
    task, steps, history = state
    assert task.state is TaskState.COMPLETED, task
    assert task.result == str(EXPECTED_RESULT)
    assert [(s.seq, s.name, s.status, s.attempts) for s in steps] == [
        (k - 1, f"crash.step-{k}", StepStatus.COMPLETED, 1) for k in range(1, STEP_COUNT + 1)
    ]
    resumed = [t for t in history
               if (t.from_state, t.to_state) == (TaskState.RECOVERING, TaskState.RUNNING)]
    assert len(resumed) == recoveries


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Child processes on a database under ``tmp_path``; none outlives the test."""
    runner = Children(tmp_path)
    yield runner
    runner.kill_all()


@dataclass
class KilledEverywhere:
    """One run killed at each position, then all resumed by one `oneshot recover`."""

    task_ids: dict[str, str]
    effects: dict[str, Path]
    before: dict[str, Snapshot]
    recovered: subprocess.CompletedProcess[bytes]
    after: dict[str, Snapshot]
    recovered_again: subprocess.CompletedProcess[bytes]


@pytest.fixture(scope="module")
def killed_everywhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilledEverywhere]:
    """Ten runs, each SIGKILLed at one of POSITIONS, resumed together by a fresh process."""
    runner = Children(tmp_path_factory.mktemp("killed-everywhere"))
    try:
        effects = {pause: runner.root / f"{pause}.effects" for pause in POSITIONS}
        started = {pause: runner.start_paused_at(pause, effects[pause]) for pause in POSITIONS}
        task_ids = {pause: runner.read_until(proc, b"\n").decode().strip()
                    for pause, (proc, _) in started.items()}
        for pause, (proc, marker) in started.items():
            runner.kill_paused(proc, marker, pause)
        before = runner.read_state()
        recovered = runner.finish(recover_cli())
        after = runner.read_state()
        again = runner.finish(recover_cli())
        yield KilledEverywhere(task_ids, effects, before, recovered, after, again)
    finally:
        runner.kill_all()


@pytest.mark.parametrize("pause", POSITIONS)
def test_workflow_killed_anywhere_resumes_and_reruns_only_the_unfinished_step(
        killed_everywhere: KilledEverywhere, pause: str) -> None:
    """SIGKILL inside step k (before its checkpoint) or right after it; recover completes it."""
    where, k = pause.split("-")[0], int(pause.split("-")[1])
    task_id = killed_everywhere.task_ids[pause]

    task, steps, _ = killed_everywhere.before[task_id]
    assert task.state is TaskState.RUNNING
    committed = k - 1 if where == "in" else k
    assert [s.name for s in steps] == [f"crash.step-{i}" for i in range(1, committed + 1)]

    assert f"oneshot: {task_id} COMPLETED" in killed_everywhere.recovered.stderr.decode()
    expected = dict(ALL_ONCE)
    if where == "in":
        expected[f"step-{k}"] = 2  # its body ran, its checkpoint did not: it runs again
    assert effects_of(killed_everywhere.effects[pause]) == expected
    assert_completed(killed_everywhere.after[task_id], recoveries=1)


def test_one_recover_resumes_every_orphaned_workflow(
        killed_everywhere: KilledEverywhere) -> None:
    """A single `oneshot recover` resumes all ten killed runs and exits 0."""
    recovered = killed_everywhere.recovered
    assert recovered.returncode == 0, recovered.stderr.decode()
    assert (f"recovered {len(POSITIONS)} tasks"
            in recovered.stderr.decode())


def test_completed_workflows_are_not_resumed_again(killed_everywhere: KilledEverywhere) -> None:
    """A second `oneshot recover` finds nothing to do and runs no step."""
    again = killed_everywhere.recovered_again
    assert again.returncode == 0, again.stderr.decode()
    assert "recovered 0 tasks" in again.stderr.decode()
    assert effects_of(killed_everywhere.effects["after-5"]) == ALL_ONCE


def test_workflow_killed_again_while_recovering_resumes_from_the_later_checkpoint(
        children: Children) -> None:
    """A recovery SIGKILLed in turn (in step 4) is itself resumed by `orch.recover()`."""
    effects = children.root / "run.effects"
    children.kill_paused(*children.start_paused_at("in-2", effects), "in-2")
    recover = [sys.executable, str(APP), "recover"]
    children.kill_paused(*children.start_paused_at("in-4", effects, recover), "in-4")

    task, steps, _ = children.only_task()
    assert task.state is TaskState.RUNNING
    assert len(steps) == 3

    done = children.finish(recover)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == [task.id, "COMPLETED"]
    assert effects_of(effects) == {"step-1": 1, "step-2": 2, "step-3": 1, "step-4": 2,
                                   "step-5": 1}
    assert_completed(children.only_task(), recoveries=2)


def test_workflow_of_a_killed_process_not_yet_reaped_is_recovered(children: Children) -> None:
    """An owner that is a zombie (killed, not yet waited for) counts as gone."""
    effects = children.root / "run.effects"
    proc, marker = children.start_paused_at("in-3", effects)
    children.kill_paused(proc, marker, "in-3", reap=False)
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + TIMEOUT
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.02)

    done = children.finish(recover_cli())
    assert done.returncode == 0, done.stderr.decode()
    assert "recovered 1 tasks" in done.stderr.decode()
    assert proc.poll() == -signal.SIGKILL
    assert effects_of(effects) == {"step-1": 1, "step-2": 1, "step-3": 2, "step-4": 1,
                                   "step-5": 1}
    assert_completed(children.only_task(), recoveries=1)


def test_example_killed_mid_way_resumes_with_oneshot_recover(children: Children) -> None:
    """examples/workflow_demo.py as its README runs it: start, kill -9 in step 3, recover."""
    demo = children.spawn([sys.executable, str(EXAMPLES / "workflow_demo.py"), "start"],
                          DEMO_STEP_SECONDS="0.2")
    children.read_until(demo, b"[3/5] transform: running")
    children.kill(demo)

    done = children.finish([oneshot_script(), "recover", "--import", "workflow_demo"],
                           PYTHONPATH=str(EXAMPLES), DEMO_STEP_SECONDS="0.2")
    assert done.returncode == 0, done.stderr.decode()
    ran = [line.split(":")[0].strip() for line in done.stdout.decode().splitlines()
           if "running" in line]
    assert ran == ["[3/5] transform", "[4/5] total", "[5/5] report"]
    task, steps, history = children.only_task()
    assert task.state is TaskState.COMPLETED
    assert task.result == "\"'the quick brown fox jumps over a lazy dog' -> 134\""
    assert [(s.seq, s.name) for s in steps] == [
        (0, "demo.fetch"), (1, "demo.clean"), (2, "demo.transform"), (3, "demo.total"),
        (4, "demo.report"),
    ]
    assert any(t.to_state is TaskState.RECOVERING for t in history)
