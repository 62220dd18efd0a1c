"""The ``oneshot`` command: a thin synchronous shell over the async core.

Exit codes: ``run`` exits with the task's code (128+N when killed by signal N, 124 when stopped
by a timeout, 127 when the command was not found, 126 when it could not be executed);
otherwise 0 on success, 1 for a missing task, a failed check or a database problem, 2 for bad
usage or configuration.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.table import Table

from config import ConfigError, OneshotSettings, describe_settings, load_settings
from durable import migrate
from durable.engine import ConnectionOptions, create_null_pool_engine
from durable.exceptions import OneshotError, TaskNotFound
from durable.persistence import store_from_settings
from durable.records import NewTask, Stream, TaskKind, TaskRecord
from durable.states import TaskState
from durable.store import Store
from durable.workflow import import_workflow_modules
from orchestrator import logview, render
from orchestrator.cancel import cancel_task
from orchestrator.options import OnLost, RunOptions
from orchestrator.orchestrator import AsyncOrchestrator, new_task_id
from orchestrator.task import TaskResult
from orchestrator.worker import run_worker

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"oneshot: {message}", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code)


def async_command(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body with anyio, turning Oneshot's errors into exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return anyio.run(functools.partial(fn, *args, **kwargs))
        except ConfigError as exc:
            fail(str(exc), 2)
        except OneshotError as exc:
            fail(str(exc), 1)
        raise AssertionError("unreachable")

    return wrapper


SECONDS = click.FloatRange(min=0, min_open=True)


class AdaptiveTimeout(click.ParamType[tuple[float, float, float], Any]):
    name = "adaptive-timeout"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[float, float, float]:
        try:
            initial, extend, maximum = (float(part) for part in str(value).split(","))
        except ValueError:
            self.fail("expected INITIAL,EXTEND,MAX in seconds, e.g. 60,30,3600", param, ctx)
        if not 0 < initial <= maximum or extend <= 0:
            self.fail("need 0 < INITIAL <= MAX and EXTEND > 0", param, ctx)
        return initial, extend, maximum


class Context:
    def __init__(self, config_file: Path | None, database: str | None) -> None:
        self.config_file = config_file
        self.database = database

    def settings(self, **overrides: Any) -> OneshotSettings:
        try:
            return load_settings(
                config_file=self.config_file,
                overrides={"database.url": self.database, **overrides},
            )
        except ConfigError as exc:
            fail(str(exc), 2)
            raise


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML settings file (default: ./oneshot.toml, then the user config dir).")
@click.option("--db", "database", metavar="URL",
              help="Database URL or SQLite file path (overrides ONESHOT_DATABASE__URL).")
@click.version_option(package_name="oneshot")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, database: str | None) -> None:
    """Oneshot: run commands durably; every transition and output byte is recorded."""
    ctx.obj = Context(config_file, database)


async def _open_store(settings: OneshotSettings) -> Store:
    store = store_from_settings(settings)
    await store.open()
    return store


async def _find_task(store: Store, task_id: str) -> TaskRecord:
    """A task by id, unique id prefix, or ``last`` (the newest task)."""
    if task_id == "last":
        newest = await store.list_tasks(limit=1)
        if not newest:
            raise TaskNotFound(task_id, "no tasks yet")
        return newest[0]
    return await store.get_task(task_id)


def _tee(stream: Stream, data: bytes) -> None:
    out = sys.stdout.buffer if stream is Stream.STDOUT else sys.stderr.buffer
    out.write(data)
    out.flush()


async def _stop_on_signal(orch: AsyncOrchestrator, received: list[int],
                          stop: anyio.Event | None = None) -> None:
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            received.append(signum)
            orch.shutdown(f"interrupted by {signal.Signals(signum).name}")
            if stop is not None:
                stop.set()


@cli.command(context_settings={"ignore_unknown_options": True,
                               "allow_interspersed_args": False})
@click.option("--name", help="A name to find the task by.")
@click.option("--no-persist", is_flag=True, help="Keep nothing: an in-memory store.")
@click.option("--detach", is_flag=True, help="Queue the task for `oneshot worker`; return at once.")
@click.option("--cwd", type=click.Path(file_okay=False), help="Working directory of the command.")
@click.option("--timeout", type=SECONDS, help="Stop the command after this many seconds.")
@click.option("--idle-timeout", type=SECONDS,
              help="Stop the command after this many seconds without output.")
@click.option("--adaptive-timeout", type=AdaptiveTimeout(), metavar="INITIAL,EXTEND,MAX",
              help="Start with INITIAL seconds, extend to EXTEND past the latest output, "
                   "never past MAX.")
@click.option("--grace", type=SECONDS, default=5.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when the command is stopped.")
@click.option("--on-lost", type=click.Choice(["interrupt", "restart", "fail"]),
              help="If the process is lost (crash, reboot): what recovery does "
                   "(default: ONESHOT_RECOVERY__MISSING_PROCESS). Use restart only for "
                   "commands that are safe to repeat.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_context
@async_command
async def run(obj: Context, name: str | None, no_persist: bool, detach: bool, cwd: str | None,
              timeout: float | None, idle_timeout: float | None,
              adaptive_timeout: tuple[float, float, float] | None, grace: float,
              on_lost: OnLost | None, command: tuple[str, ...]) -> None:
    """Run CMD ARGS... (after --), streaming its output; exit with its exit code.

    The command runs under a detached shim that survives this process: if Oneshot is killed,
    `oneshot recover` (or a starting worker) reattaches to it. Timeouts are enforced by the
    shim, so they hold while no orchestrator runs.
    """
    settings = obj.settings(**({"persistence.enabled": False} if no_persist else {}))
    argv = list(command)
    options = RunOptions(timeout, idle_timeout, adaptive_timeout, grace, on_lost)
    if detach:
        if not settings.persistence.enabled:
            fail("--detach needs persistence: a worker can only run what is stored", 2)
        store = await _open_store(settings)
        try:
            task = NewTask(id=new_task_id(), kind=TaskKind.COMMAND, name=name, argv=argv,
                           cwd=str(Path(cwd or ".").resolve()), options=options.to_json())
            await store.create_task(task, reason="queued (run --detach)")
        finally:
            await store.close()
        err_console.print(f"oneshot: task {task.id} queued", highlight=False)
        click.echo(task.id)
        return
    received: list[int] = []
    async with AsyncOrchestrator(settings) as orch, anyio.create_task_group() as watchers:
        watchers.start_soon(_stop_on_signal, orch, received)
        handle = await orch.submit(argv, name=name, cwd=cwd, tee=_tee, options=options)
        err_console.print(f"oneshot: task {handle.id}", highlight=False)
        result = await handle.result()
        watchers.cancel_scope.cancel()
    raise SystemExit(_run_exit_code(result, received))


TIMED_OUT = 124
"""`run`'s exit code when the shim stopped the command for a timeout (as GNU timeout)."""


def _run_exit_code(result: TaskResult, received: list[int]) -> int:
    if result.state is TaskState.INTERRUPTED and received:
        return 128 + received[0]
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
    settings = _persistent_settings(obj, "cancel")
    async with AsyncOrchestrator(settings) as orch:
        record = await _find_task(orch.store, task_id)
        ended = await cancel_task(orch, record)
    err_console.print(f"oneshot: task {ended.id} {ended.state.value}", highlight=False)


STATE_CHOICE = click.Choice([s.value for s in TaskState], case_sensitive=False)


@cli.command(name="ls")
@click.option("--state", "states", multiple=True, type=STATE_CHOICE,
              help="Only tasks in this state (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
@async_command
async def list_tasks(obj: Context, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List tasks, newest first."""
    store = await _open_store(obj.settings())
    try:
        wanted = [TaskState(s.upper()) for s in states] or None
        rows = await store.list_tasks(states=wanted, limit=limit)
    finally:
        await store.close()
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
    elif rows:
        console.print(render.tasks_table(rows))
    else:
        err_console.print("no tasks")


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a timeline.")
@pass_context
@async_command
async def show(obj: Context, task_id: str, as_json: bool) -> None:
    """Show a task: details, timeline of transitions, exit."""
    store = await _open_store(obj.settings())
    try:
        task = await _find_task(store, task_id)
        history = await store.history(task.id)
        size = await store.log_size(task.id)
        steps = await store.load_steps(task.id)
    finally:
        await store.close()
    if as_json:
        click.echo(json.dumps(render.task_json(task, history, steps), indent=2))
    else:
        render.show_task(console, task, history, size, steps)


STREAM_CHOICE = click.Choice(["stdout", "stderr", "all"], case_sensitive=False)


@cli.command()
@click.argument("task_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the task ends.")
@click.option("--stream", type=STREAM_CHOICE, default="all", show_default=True)
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--raw", is_flag=True, help="Write the exact stored bytes, all to stdout.")
@pass_context
@async_command
async def logs(obj: Context, task_id: str, follow: bool, stream: str, tail: int | None,
               raw: bool) -> None:
    """Print a task's captured output."""
    streams = None if stream.lower() == "all" else [Stream.parse(stream)]
    store = await _open_store(obj.settings())

    def emit(which: Stream, data: bytes) -> None:
        if raw:
            sys.stdout.buffer.write(data)
            return
        out = sys.stdout if which is Stream.STDOUT else sys.stderr
        out.write(data.decode("utf-8", errors="backslashreplace"))

    try:
        task = await _find_task(store, task_id)
        after = -1
        if tail is not None:
            after, pieces = await logview.tail(store, task.id, streams, tail)
            for which, data in pieces:
                emit(which, data)
        source = (logview.follow(store, task.id, streams, after,
                                 logview.FinishedCheck(store, task.id))
                  if follow else logview.fragments_after(store, task.id, streams, after))
        async for fragment in source:
            emit(fragment.stream, fragment.data)
            if follow:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        sys.stdout.flush()
        await store.close()


IMPORT_OPTION = click.option(
    "--import", "modules", multiple=True, metavar="MODULE",
    help="Import MODULE to register its workflows (repeatable; adds to "
         "ONESHOT_WORKFLOWS__MODULES).")


def _import_workflows(settings: OneshotSettings, modules: tuple[str, ...]) -> None:
    for module in [*settings.workflows.modules, *modules]:
        try:
            import_workflow_modules([module])
        except ImportError as exc:
            fail(f"cannot import workflow module {module!r}: {exc}", 2)


def _persistent_settings(obj: Context, what: str, **overrides: Any) -> OneshotSettings:
    settings = obj.settings(**overrides)
    if not settings.persistence.enabled:
        fail(f"{what} needs persistence: it works on what is stored", 2)
    return settings


@cli.command()
@click.option("--concurrency", type=click.IntRange(min=1), help="Tasks run at once.")
@click.option("--queue", default="default", show_default=True, help="Queue to take tasks from.")
@IMPORT_OPTION
@pass_context
@async_command
async def worker(obj: Context, concurrency: int | None, queue: str,
                 modules: tuple[str, ...]) -> None:
    """Run queued tasks (from `run --detach`) until SIGTERM or Ctrl-C; recover on start."""
    settings = _persistent_settings(obj, "a worker", concurrency=concurrency)
    _import_workflows(settings, modules)
    stop = anyio.Event()
    received: list[int] = []
    async with AsyncOrchestrator(settings) as orch, anyio.create_task_group() as watchers:
        watchers.start_soon(_stop_on_signal, orch, received, stop)
        err_console.print(f"oneshot: worker {orch.worker_id} on {settings.database.url} "
                          f"(concurrency {settings.concurrency})", highlight=False)
        if settings.recovery.on_startup:
            resumed = await orch.recover()
            if resumed:
                err_console.print(f"oneshot: resumed {len(resumed)} workflows", highlight=False)
        started = await run_worker(orch, stop, queue=queue)
        watchers.cancel_scope.cancel()
    err_console.print(f"oneshot: worker stopped after {started} tasks", highlight=False)


@cli.command()
@IMPORT_OPTION
@pass_context
@async_command
async def recover(obj: Context, modules: tuple[str, ...]) -> None:
    """Resume interrupted tasks (reattach, settle or fall back by policy) and wait for them."""
    settings = _persistent_settings(obj, "recover")
    _import_workflows(settings, modules)
    received: list[int] = []
    async with AsyncOrchestrator(settings) as orch, anyio.create_task_group() as watchers:
        watchers.start_soon(_stop_on_signal, orch, received)
        handles = await orch.recover()
        for handle in handles:
            outcome = await handle.outcome()
            err_console.print(f"oneshot: {handle.id} {outcome.state.value}", highlight=False)
        watchers.cancel_scope.cancel()
    err_console.print(f"oneshot: recovered {len(handles)} tasks", highlight=False)


@cli.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def show_config(obj: Context, as_json: bool) -> None:
    """Print the effective settings and where each value came from (secrets masked)."""
    lines = describe_settings(obj.settings())
    if as_json:
        click.echo(json.dumps({line.key: {"value": line.value, "source": line.source}
                               for line in lines}, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("SETTING", "VALUE", "SOURCE"):
        table.add_column(column)
    for line in lines:
        table.add_row(line.key, line.value, line.source)
    console.print(table)


@cli.group()
def db() -> None:
    """Database maintenance: upgrade, check."""


def _connection_options(settings: OneshotSettings) -> ConnectionOptions:
    return ConnectionOptions(url=settings.database.url,
                             synchronous=settings.database.synchronous,
                             busy_timeout_ms=settings.database.busy_timeout_ms)


async def _with_engine(settings: OneshotSettings, action: Callable[[Any], Awaitable[T]]) -> T:
    engine = create_null_pool_engine(_connection_options(settings))
    try:
        return await action(engine)
    finally:
        await engine.dispose()


@db.command()
@pass_context
@async_command
async def upgrade(obj: Context) -> None:
    """Migrate the database to the newest schema."""
    settings = obj.settings()
    await _with_engine(settings, migrate.upgrade)
    err_console.print(f"oneshot: {settings.database.url} is at revision "
                      f"{migrate.head_revision()}", highlight=False)


@db.command()
@pass_context
@async_command
async def check(obj: Context) -> None:
    """Report the schema revision and SQLite's quick_check; exit 1 if anything is wrong."""
    settings = obj.settings()
    result = await _with_engine(settings, migrate.check)
    click.echo(f"database:     {settings.database.url}")
    click.echo(f"revision:     {result.current or 'none'} (head {result.head})")
    if result.quick_check is not None:
        click.echo(f"quick_check:  {'; '.join(result.quick_check)}")
    if result.foreign_key_problems is not None:
        click.echo(f"foreign keys: {result.foreign_key_problems} problems")
    if not result.healthy:
        fail("database check failed" + ("" if result.up_to_date else
                                         ": run `oneshot db upgrade`"))


def main() -> None:
    cli(prog_name="oneshot")
