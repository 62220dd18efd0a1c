"""``run_command``: a command as a durable workflow step.

Inside a workflow the command runs as its own command task (so its output is captured in
``log_fragments`` like any ``oneshot run``), and the step's checkpoint keeps the outcome: on
replay a finished command is not run again. It needs an open :class:`AsyncOrchestrator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from durable.context import current_runtime, current_step
from durable.exceptions import OneshotError, TaskNotFound
from durable.records import Stream
from durable.step import durable
from orchestrator.logview import tail_text
from orchestrator.orchestrator import AsyncOrchestrator
from orchestrator.task import TaskResult

TAIL_LINES = 20
REJOIN_POLL_SECONDS = 0.5
"""How often a resumed step looks again at a command another live process still follows."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    task_id: str
    state: str
    exit_code: int | None
    stdout_tail: str
    stderr_tail: str


class CommandFailed(OneshotError):
    def __init__(self, argv: list[str], result: CommandResult) -> None:
        super().__init__(f"{argv[0]} failed ({result.state}, exit code {result.exit_code}): "
                         f"{result.stderr_tail[-500:]}")
        self.argv = argv
        self.result = result


@durable(name="oneshot.run_command")
async def run_command(argv: list[str], name: str | None = None, cwd: str | None = None,
                      check: bool = True) -> CommandResult:
    """Run ``argv`` as a task; raise CommandFailed if ``check`` and it did not exit 0.

    Inside a workflow the command's task id derives from the step, so a workflow resumed
    after a crash rejoins the command its first run started — following it if it still runs,
    taking its exit if it finished, applying its on-lost policy if it is gone — and never runs
    it a second time.
    """
    runtime = current_runtime.get()
    if not isinstance(runtime, AsyncOrchestrator):
        raise OneshotError("run_command needs an open AsyncOrchestrator")
    call = current_step.get()
    if call is None:
        outcome = await runtime.run(argv, name=name, cwd=cwd)
    else:
        outcome = await _run_or_rejoin(runtime, call.child_id(), argv, name, cwd)
    result = CommandResult(
        outcome.id, outcome.state.value, outcome.exit_code,
        await tail_text(runtime.store, outcome.id, Stream.STDOUT, TAIL_LINES),
        await tail_text(runtime.store, outcome.id, Stream.STDERR, TAIL_LINES),
    )
    if check and outcome.exit_code != 0:
        raise CommandFailed(argv, result)
    return result


async def _run_or_rejoin(orch: AsyncOrchestrator, task_id: str, argv: list[str],
                         name: str | None, cwd: str | None) -> TaskResult:
    """Start the command as task ``task_id`` — or, when a previous run of this step already
    started it, its outcome: as stored when it ended, else once recovery has reattached to it,
    settled it from its exit file or applied its on-lost policy."""
    try:
        record = await orch.store.get_task(task_id)
    except TaskNotFound:
        return await orch.run(argv, name=name, cwd=cwd, task_id=task_id)
    while not record.state.is_terminal:
        for handle in await orch.recover(only=task_id):
            return await handle.outcome()
        # Ended by recovery itself, or still owned by a live process: look again.
        record = await orch.store.get_task(task_id)
        if not record.state.is_terminal:
            await anyio.sleep(REJOIN_POLL_SECONDS)
    return TaskResult(record.id, record.state, record.exit_code, record.error)
