"""Commands that run tasks: run, cancel, worker, recover."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import click

from config import OneshotSettings
from config.settings import is_utf8
from durable.exceptions import SerializationError, WorkflowNotRegistered
from durable.records import NewTask, TaskKind
from durable.states import TaskState
from durable.workflow import get_workflow
from orchestrator.cancel import cancel_task
from orchestrator.cli.app import (
    IMPORT_OPTION,
    UTF8_TEXT,
    Context,
    async_command,
    cli,
    err_console,
    fail,
    find_task,
    import_workflows,
    open_store,
    pass_context,
    persistent_settings,
    stop_on_signal,
    tee_output,
)
from orchestrator.cli.backup import periodic_backup_jobs
from orchestrator.cli.prune import retention_jobs
from orchestrator.options import OnLost, RunOptions
from orchestrator.orchestrator import AsyncOrchestrator, new_task_id
from orchestrator.task import TaskResult
from orchestrator.worker import WorkerOptions, run_worker


class Seconds(click.ParamType[float, Any]):
    """A finite number of seconds, above zero (or at least zero with ``zero_ok``): "nan" and
    "inf" are not durations (click's FloatRange lets both through)."""

    name = "seconds"

    def __init__(self, *, zero_ok: bool = False) -> None:
        self.zero_ok = zero_ok

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.zero_ok):
            self.fail(f"{value!r} is not a finite number of seconds "
                      f"{'>= 0' if self.zero_ok else '> 0'}", param, ctx)
        return seconds


SECONDS = Seconds()


class AdaptiveTimeout(click.ParamType[tuple[float, float, float], Any]):
    name = "adaptive-timeout"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[float, float, float]:
        try:
            initial, extend, maximum = (float(part) for part in str(value).split(","))
        except ValueError:
            self.fail("expected INITIAL,EXTEND,MAX in seconds, e.g. 60,30,3600", param, ctx)
        if not all(map(math.isfinite, (initial, extend, maximum))):
            self.fail("INITIAL, EXTEND and MAX must be finite numbers", param, ctx)
        if not 0 < initial <= maximum or extend <= 0:
            self.fail("need 0 < INITIAL <= MAX and EXTEND > 0", param, ctx)
        return initial, extend, maximum


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say how a command runs, shared by `run` and `submit`."""
    decorators = [
        click.option("--name", type=UTF8_TEXT, help="A name to find the task by."),
        click.option("--cwd", type=click.Path(file_okay=False),
                     help="Working directory of the command."),
        click.option("--timeout", type=SECONDS, help="Stop the command after this many seconds."),
        click.option("--idle-timeout", type=SECONDS,
                     help="Stop the command after this many seconds without output."),
        click.option("--adaptive-timeout", type=AdaptiveTimeout(), metavar="INITIAL,EXTEND,MAX",
                     help="Start with INITIAL seconds, extend to EXTEND past the latest output, "
                          "never past MAX."),
        click.option("--grace", type=SECONDS, default=5.0, show_default=True,
                     help="Seconds between SIGTERM and SIGKILL when the command is stopped."),
        click.option("--on-lost", type=click.Choice(["interrupt", "restart", "fail"]),
                     help="If the process is lost (crash, reboot): what recovery does "
                          "(default: ONESHOT_RECOVERY__MISSING_PROCESS). Use restart only for "
                          "commands that are safe to repeat."),
    ]
    for decorate in reversed(decorators):
        fn = decorate(fn)
    return fn


QUEUE_OPTION = click.option("--queue", type=UTF8_TEXT, default="default", show_default=True,
                            help="The queue workers take it from (`oneshot worker --queue`).")


async def enqueue(settings: OneshotSettings, task: NewTask) -> None:
    """Commit a task with no owner: the next `oneshot worker` of its queue claims it."""
    if not settings.persistence.enabled:
        fail("--detach and submit need persistence: a worker can only run what is stored", 2)
    store = await open_store(settings)
    try:
        await store.create_task(task, reason=f"queued on {task.queue}")
    finally:
        await store.close()
    err_console.print(f"oneshot: task {task.id} queued on {task.queue}", highlight=False)
    click.echo(task.id)


def command_task(argv: list[str], name: str | None, cwd: str | None, options: RunOptions,
                 queue: str) -> NewTask:
    return NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=name, argv=argv,
                   cwd=checked_cwd(str(Path(cwd or ".").resolve()), cwd),
                   options=options.to_json(), queue=queue)


def checked_cwd(directory: str, given: str | None) -> str:
    """The task's working directory, which the store keeps as text: a path that is not UTF-8
    is a usage error here rather than a crash in the database driver."""
    if not is_utf8(directory):
        what = "--cwd" if given is not None else "the current directory"
        hint = "" if given is not None else "; give a UTF-8 one with --cwd"
        fail(f"{what}: {directory!r} is not valid UTF-8 (the task's directory is stored as "
             f"text){hint}", 2)
    return directory


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@run_options
@click.option("--no-persist", is_flag=True, help="Keep nothing: an in-memory store.")
@click.option("--detach", is_flag=True,
              help="Queue the task for `oneshot worker`; print its id and return at once.")
@QUEUE_OPTION
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_context
@async_command
async def run(obj: Context, name: str | None, no_persist: bool, detach: bool, cwd: str | None,
              timeout: float | None, idle_timeout: float | None,
              adaptive_timeout: tuple[float, float, float] | None, grace: float,
              on_lost: OnLost | None, queue: str, command: tuple[str, ...]) -> None:
    """Run CMD ARGS... (after --), streaming its output; exit with its exit code.

    The command runs under a detached shim that survives this process: if Oneshot is killed,
    `oneshot recover` (or a starting worker) reattaches to it. Timeouts are enforced by the
    shim, so they hold while no orchestrator runs.
    """
    settings = obj.settings(**({"persistence.enabled": False} if no_persist else {}))
    argv = list(command)
    options = RunOptions(timeout, idle_timeout, adaptive_timeout, grace, on_lost)
    if detach:
        await enqueue(settings, command_task(argv, name, cwd, options, queue))
        return
    checked_cwd(cwd or os.getcwd(), cwd)
    received: list[int] = []
    async with (AsyncOrchestrator(settings, resume_workflows=False) as orch,
                anyio.create_task_group() as watchers):
        watchers.start_soon(stop_on_signal, orch, received)
        handle = await orch.submit(argv, name=name, cwd=cwd, tee=tee_output, options=options)
        err_console.print(f"oneshot: task {handle.id}", highlight=False)
        result = await handle.result()
        watchers.cancel_scope.cancel()
    raise SystemExit(_run_exit_code(result, received))


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@run_options
@QUEUE_OPTION
@click.option("--workflow", metavar="NAME",
              help="Queue the registered workflow NAME instead of a command.")
@click.option("--input", "input_json", metavar="JSON", default="{}", show_default=True,
              help="The workflow's arguments as a JSON object, by parameter name.")
@IMPORT_OPTION
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_context
@async_command
async def submit(obj: Context, name: str | None, cwd: str | None, timeout: float | None,
                 idle_timeout: float | None, adaptive_timeout: tuple[float, float, float] | None,
                 grace: float, on_lost: OnLost | None, queue: str, workflow: str | None,
                 input_json: str, modules: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Queue a command (-- CMD ARGS...) or a workflow (--workflow NAME) for `oneshot worker`.

    Prints the task id on stdout. A workflow's module must be importable here too
    (--import or ONESHOT_WORKFLOWS__MODULES), so its input is checked before it is queued.
    """
    settings = obj.settings()
    if workflow is None:
        if not command:
            fail("give a command after -- or --workflow NAME", 2)
        options = RunOptions(timeout, idle_timeout, adaptive_timeout, grace, on_lost)
        await enqueue(settings, command_task(list(command), name, cwd, options, queue))
        return
    if command:
        fail("give either a command or --workflow, not both", 2)
    import_workflows(settings, modules)
    await enqueue(settings, _workflow_task(workflow, input_json, name, queue))


def _workflow_task(workflow: str, input_json: str, name: str | None, queue: str) -> NewTask:
    try:
        definition = get_workflow(workflow)
    except WorkflowNotRegistered as exc:
        fail(str(exc), 2)
        raise
    try:
        args, kwargs = definition.codec.from_plain_json(input_json)
        stored = definition.codec.dump(args, kwargs, definition.name)
    except (ValueError, TypeError, AttributeError, SerializationError) as exc:
        fail(f"--input does not fit workflow {workflow!r}: {str(exc).splitlines()[0]}", 2)
        raise
    return NewTask(id=new_task_id(), kind=TaskKind.WORKFLOW, name=name or definition.name,
                   workflow=definition.name, input=stored, queue=queue)


TIMED_OUT = 124
LET_GO = 75
"""EX_TEMPFAIL: this process stopped following a task that goes on (its writes kept failing,
or another worker took it over); `oneshot recover` or any worker carries it on."""
"""`run`'s exit code when the shim stopped the command for a timeout (as GNU timeout)."""


def _run_exit_code(result: TaskResult, received: list[int]) -> int:
    if result.state is TaskState.INTERRUPTED and received:
        return 128 + received[0]
    if not result.state.is_terminal:
        err_console.print(f"oneshot: task {result.id}: {result.error}; its command keeps "
                          "running and `oneshot recover` (or any worker) carries it on",
                          highlight=False, markup=False, soft_wrap=True)
        return LET_GO
    if result.exit_code is not None and result.error and "timeout" in result.error:
        return TIMED_OUT
    if result.exit_code is None and result.error:
        err_console.print(f"oneshot: {result.error}", highlight=False, markup=False)
        return 126 if "permission denied" in result.error else 127
    return result.shell_exit_code


@cli.command()
@click.argument("task_id", metavar="ID")
@pass_context
@async_command
async def cancel(obj: Context, task_id: str) -> None:
    """Stop a task (its whole process group), whichever process started it."""
    settings = persistent_settings(obj, "cancel")
    async with AsyncOrchestrator(settings, resume_workflows=False) as orch:
        record = await find_task(orch.store, task_id)
        ended = await cancel_task(orch, record)
    err_console.print(f"oneshot: task {ended.id} {ended.state.value}", highlight=False)


@cli.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Tasks run at once.")
@click.option("--queue", "queues", type=UTF8_TEXT, multiple=True, metavar="NAME",
              help="Take tasks from this queue (repeatable; default: ONESHOT_WORKER__QUEUES, "
                   "else 'default').")
@click.option("--drain-grace", type=Seconds(zero_ok=True), metavar="SECONDS",
              help="On SIGTERM, let running tasks finish this long before handing them over "
                   "(default: ONESHOT_WORKER__DRAIN_GRACE).")
@IMPORT_OPTION
@pass_context
@async_command
async def worker(obj: Context, concurrency: int | None, queues: tuple[str, ...],
                 drain_grace: float | None, modules: tuple[str, ...]) -> None:
    """Run queued tasks until SIGTERM or Ctrl-C, then drain; recover on start.

    Any number of workers may share one database (on PostgreSQL, on many machines): each
    claims queued tasks, heartbeats its leases, and takes over the tasks of workers whose
    lease expired. A first SIGTERM/SIGINT drains (no more claims; running tasks get the grace
    period, then are handed over to other workers); a second one interrupts them at once.
    """
    overrides: dict[str, Any] = {"concurrency": concurrency, "worker.drain_grace": drain_grace}
    if queues:
        overrides["worker.queues"] = list(queues)
    settings = persistent_settings(obj, "a worker", **overrides)
    import_workflows(settings, modules)
    stop = anyio.Event()
    received: list[int] = []
    options = WorkerOptions(queues=tuple(settings.worker.queues),
                            drain_grace=settings.worker.drain_grace)
    async with (AsyncOrchestrator(settings, resume_workflows=False) as orch,
                anyio.create_task_group() as watchers):
        watchers.start_soon(stop_on_signal, orch, received, stop)
        err_console.print(f"oneshot: worker {orch.worker_id} on {settings.database.url} "
                          f"(queues {', '.join(options.queues)}, concurrency "
                          f"{settings.concurrency})", highlight=False)
        if settings.recovery.on_startup:
            resumed = await orch.recover()
            if resumed:
                err_console.print(f"oneshot: resumed {len(resumed)} tasks", highlight=False)
        started = await run_worker(orch, stop, options,
                                   jobs=[*periodic_backup_jobs(settings), *retention_jobs(orch)])
        watchers.cancel_scope.cancel()
    err_console.print(f"oneshot: worker stopped after {started} tasks", highlight=False)


@cli.command()
@IMPORT_OPTION
@pass_context
@async_command
async def recover(obj: Context, modules: tuple[str, ...]) -> None:
    """Resume interrupted tasks (reattach, settle or fall back by policy) and wait for them."""
    settings = persistent_settings(obj, "recover")
    import_workflows(settings, modules)
    received: list[int] = []
    async with (AsyncOrchestrator(settings, resume_workflows=False) as orch,
                anyio.create_task_group() as watchers):
        watchers.start_soon(stop_on_signal, orch, received)
        handles = await orch.recover()
        for handle in handles:
            outcome = await handle.outcome()
            err_console.print(f"oneshot: {handle.id} {outcome.state.value}", highlight=False)
        watchers.cancel_scope.cancel()
    err_console.print(f"oneshot: recovered {len(handles)} tasks", highlight=False)


