"""A worker told to stop (SIGTERM) drains: it claims nothing more, lets its tasks finish within
the grace period, and hands over what is still running, to be reattached by another worker.
`oneshot workers` shows the workers and what they run."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import Fleet, everything, reaped

from durable.records import NewTask, TaskKind, TaskRecord, Transition
from durable.states import TaskState
from durable.store import Store
from orchestrator.orchestrator import new_task_id
from tests.support import Database, persisted_only

TIMEOUT = 30.0


class Workers(Fleet):
    """A fleet with shorter leases, and single tasks to queue and read."""

    def __init__(self, database: Database, tmp_path: Path) -> None:
        super().__init__(database, tmp_path)
        self.env["ONESHOT_WORKER__LEASE_SECONDS"] = "2"

    def queue(self, *argv: str) -> str:
        async def main(store: Store) -> str:
            task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, argv=list(argv),
                           cwd=str(self.tmp_path))
            return (await store.create_task(task, reason="queued")).id

        return self.query(main)  # type: ignore[return-value]

    def task(self, task_id: str) -> tuple[TaskRecord, list[Transition], bytes]:
        [found] = everything(self, [task_id]).values()
        return found


@pytest.fixture
def workers(database: Database, tmp_path: Path) -> Iterator[Workers]:
    with reaped(Workers(database, tmp_path)) as fleet:
        yield fleet


@persisted_only
def test_a_draining_worker_lets_its_task_finish_and_claims_nothing_more(
        workers: Workers) -> None:
    """SIGTERM: the running task completes within the grace period, the queued one stays
    queued, the worker exits 0 and is listed as stopped."""
    running = workers.queue("sh", "-c", "echo started; sleep 3; echo done")
    waiting = workers.queue("true")  # behind it: concurrency 1 keeps it queued
    worker = workers.start_worker("--concurrency", "1", "--drain-grace", "20")
    workers.wait("the task's output", lambda: workers.task(running)[2] != b"")
    live = json.loads(workers.cli("workers", "--json").stdout)
    assert [(w["pid"], w["state"], w["running"]) for w in live] == [(worker.pid, "active", 1)]

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=TIMEOUT) == 0, workers.log(0)
    record, _, output = workers.task(running)
    assert (record.state, output) == (TaskState.COMPLETED, b"started\ndone\n")
    assert workers.task(waiting)[0].state is TaskState.CREATED
    assert workers.task(waiting)[0].owner is None
    assert workers.cli("workers").stderr.strip() == b"no live workers"
    stopped = json.loads(workers.cli("workers", "--all", "--json").stdout)
    assert [(w["state"], w["finished"], w["running"]) for w in stopped] == [("stopped", 1, 0)]


@persisted_only
def test_past_the_grace_period_a_running_command_is_handed_over_and_reattached(
        workers: Workers) -> None:
    """The draining worker leaves the command running with its lease expired; the next worker
    reattaches to it, and the output is whole: nothing lost, nothing twice."""
    task_id = workers.queue("sh", "-c", "echo before; sleep 5; echo after")
    first = workers.start_worker("--drain-grace", "0.2")
    workers.wait("the first line", lambda: workers.task(task_id)[2] == b"before\n")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=TIMEOUT) == 0, workers.log(0)
    record, _, _ = workers.task(task_id)
    assert (record.state, record.owner) == (TaskState.RUNNING, None)
    assert record.lease_expires_at is not None and record.lease_expires_at <= time.time()

    workers.start_worker()
    workers.wait("the task to end", lambda: workers.task(task_id)[0].state.is_terminal)
    record, history, output = workers.task(task_id)
    assert (record.state, record.exit_code, output) == (TaskState.COMPLETED, 0,
                                                        b"before\nafter\n")
    assert any((row.reason or "").startswith("reattached") for row in history), history


@persisted_only
def test_submit_queues_commands_and_workflows_for_the_workers_of_their_queue(
        workers: Workers, tmp_path: Path) -> None:
    """`submit` prints the id of a queued task; a worker takes only the queues it serves; a
    workflow's input is checked against its signature before anything is queued."""
    workers.env["PYTHONPATH"] = str(Path(__file__).resolve().parent)
    gpu = workers.cli("submit", "--queue", "gpu", "--name", "on-gpu", "--", "echo", "hi")
    assert gpu.returncode == 0, gpu.stderr
    gpu_id = gpu.stdout.decode().strip()
    plain = workers.cli("submit", "--", "echo", "default")
    effects = tmp_path / "effects"
    flow = workers.cli("submit", "--queue", "gpu", "--import", "fleet_app", "--workflow",
                       "fleet.five_steps", "--input",
                       json.dumps({"tag": "w", "effects_file": str(effects)}))
    assert flow.returncode == 0, flow.stderr
    bad = [workers.cli("submit"),
           workers.cli("submit", "--import", "fleet_app", "--workflow", "fleet.five_steps",
                       "--input", '{"tag": 1}'),
           workers.cli("submit", "--workflow", "no.such.workflow"),
           workers.cli("submit", "--workflow", "fleet.five_steps", "--", "echo")]
    for proc in bad:
        assert proc.returncode == 2, proc.stderr
        assert b"Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1

    record = workers.task(gpu_id)[0]
    assert (record.state, record.queue, record.owner, record.name) == (
        TaskState.CREATED, "gpu", None, "on-gpu")
    worker = workers.start_worker("--queue", "gpu")
    flow_id = flow.stdout.decode().strip()
    workers.wait("the gpu tasks", lambda: all(workers.task(t)[0].state.is_terminal
                                              for t in (gpu_id, flow_id)))
    assert workers.task(gpu_id)[2] == b"hi\n"
    assert workers.task(flow_id)[0].result == "12345"
    assert workers.task(plain.stdout.decode().strip())[0].state is TaskState.CREATED
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=TIMEOUT) == 0
