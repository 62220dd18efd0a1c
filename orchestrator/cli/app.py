"""The `oneshot` group and what its commands share: settings, errors, the store."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console

from config import ConfigError, OneshotSettings, load_settings
from config.settings import is_utf8
from durable.backup import damage_in, damage_message
from durable.exceptions import OneshotError, TaskNotFound
from durable.persistence import store_from_settings
from durable.records import Stream, TaskRecord
from durable.store import Store
from durable.workflow import import_workflow_modules
from orchestrator.orchestrator import AsyncOrchestrator

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# No console markup: task names, commands, paths and errors are user text, and a "[/]" in one
# would be a MarkupError (styles come from Text objects and table styles instead).
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"oneshot: {message}", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code)


def async_command(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body with anyio, turning Oneshot's errors into exit codes."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return anyio.run(functools.partial(fn, *args, **kwargs))
        except Exception as raised:
            # An error raised inside `async with AsyncOrchestrator(...)` (a task group) arrives
            # wrapped in an exception group: judge the one error inside, not the group.
            exc = _single(raised)
            if isinstance(exc, ConfigError):
                fail(str(exc), 2)
            # A damaged database file can surface anywhere (a read, a group commit): one line.
            damaged = damage_message(raised, _database_url(args)) if damage_in(raised) else None
            if damaged is None and not isinstance(exc, OneshotError):
                raise
            fail(damaged or str(exc), 1)
        raise AssertionError("unreachable")

    return wrapper


def _single(error: BaseException) -> BaseException:
    """The only exception inside (possibly nested) exception groups, else ``error`` itself."""
    found = error
    while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
        found = found.exceptions[0]
    return error if isinstance(found, BaseExceptionGroup) else found


class Utf8Text(click.ParamType[str, Any]):
    """Text the store keeps as text (a name, a queue): bytes that are not UTF-8 (they reach
    Python as lone surrogates) are a usage error, not a crash in the database driver."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value)
        if not is_utf8(text):
            self.fail(f"{text!r} is not valid UTF-8", param, ctx)
        return text


UTF8_TEXT = Utf8Text()


def _database_url(args: tuple[Any, ...]) -> str | None:
    try:
        obj = next(arg for arg in args if isinstance(arg, Context))
        return obj.settings().database.url
    except (Exception, SystemExit):  # only to name the file; never hide the error itself
        return None


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


async def open_store(settings: OneshotSettings) -> Store:
    store = store_from_settings(settings)
    await store.open()
    return store


async def find_task(store: Store, task_id: str) -> TaskRecord:
    """A task by id, unique id prefix, or ``last`` (the newest task)."""
    if task_id == "last":
        newest = await store.list_tasks(limit=1)
        if not newest:
            raise TaskNotFound(task_id, "no tasks yet")
        return newest[0]
    return await store.get_task(task_id)


def tee_output(stream: Stream, data: bytes) -> None:
    out = sys.stdout.buffer if stream is Stream.STDOUT else sys.stderr.buffer
    out.write(data)
    out.flush()


async def stop_on_signal(orch: AsyncOrchestrator, received: list[int],
                          drain: anyio.Event | None = None) -> None:
    """Interrupt every task on SIGINT/SIGTERM/SIGHUP; with ``drain`` (a worker), the first
    signal only sets it, and a second one interrupts."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            received.append(signum)
            name = signal.Signals(signum).name
            if drain is not None and not drain.is_set():
                drain.set()
                err_console.print(f"oneshot: {name}: draining (again to interrupt now)",
                                  highlight=False)
                continue
            orch.shutdown(f"interrupted by {name}")


IMPORT_OPTION = click.option(
    "--import", "modules", multiple=True, metavar="MODULE|PATH",
    help="Import a module (myapp.flows) or a Python file (flows/flow.py) to register its "
         "workflows (repeatable; adds to ONESHOT_WORKFLOWS__MODULES).")


def import_workflows(settings: OneshotSettings, modules: tuple[str, ...]) -> None:
    for module in [*settings.workflows.modules, *modules]:
        try:
            import_workflow_modules([module])
        except ImportError as exc:
            fail(f"cannot import workflow module {module!r}: {exc}", 2)


def persistent_settings(obj: Context, what: str, **overrides: Any) -> OneshotSettings:
    settings = obj.settings(**overrides)
    if not settings.persistence.enabled:
        fail(f"{what} needs persistence: it works on what is stored", 2)
    return settings


