"""``run_command``: a command as a durable workflow step.

Inside a workflow the command runs as its own command task (so its output is captured in
``log_fragments`` like any ``oneshot run``), and the step's checkpoint keeps the outcome: on
replay a finished command is not run again. It needs an open :class:`AsyncOrchestrator`.
"""

from __future__ import annotations

from dataclasses import dataclass

from durable.context import current_runtime
from durable.exceptions import OneshotError
from durable.records import Stream
from durable.step import durable
from orchestrator.logview import tail_text
from orchestrator.orchestrator import AsyncOrchestrator

TAIL_LINES = 20


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
    """Run ``argv`` as a task; raise CommandFailed if ``check`` and it did not exit 0."""
    runtime = current_runtime.get()
    if not isinstance(runtime, AsyncOrchestrator):
        raise OneshotError("run_command needs an open AsyncOrchestrator")
    outcome = await runtime.run(argv, name=name, cwd=cwd)
    result = CommandResult(
        outcome.id, outcome.state.value, outcome.exit_code,
        await tail_text(runtime.store, outcome.id, Stream.STDOUT, TAIL_LINES),
        await tail_text(runtime.store, outcome.id, Stream.STDERR, TAIL_LINES),
    )
    if check and outcome.exit_code != 0:
        raise CommandFailed(argv, result)
    return result
