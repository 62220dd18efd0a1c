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
from orchestrator import logview
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
    tails = {}
    for stream in (Stream.STDOUT, Stream.STDERR):
        _, pieces = await logview.tail(runtime.store, outcome.id, [stream], TAIL_LINES)
        tails[stream] = b"".join(data for _, data in pieces).decode("utf-8", "replace")
    result = CommandResult(outcome.id, outcome.state.value, outcome.exit_code,
                           tails[Stream.STDOUT], tails[Stream.STDERR])
    if check and outcome.exit_code != 0:
        raise CommandFailed(argv, result)
    return result
