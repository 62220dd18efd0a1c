"""Commands that read history: ls, show, logs."""

from __future__ import annotations

import json
import sys

import click

from config.settings import SQL_INT_MAX
from durable.records import Stream
from durable.states import TaskState
from orchestrator import render
from orchestrator.cli.app import (
    UTF8_TEXT,
    Context,
    async_command,
    cli,
    console,
    err_console,
    find_task,
    open_store,
    pass_context,
)
from orchestrator.cli.timeparam import TIME
from orchestrator.logview import OutputQuery, read_output

STATE_CHOICE = click.Choice([s.value for s in TaskState], case_sensitive=False)


@cli.command(name="ls")
@click.option("--state", "states", multiple=True, type=STATE_CHOICE,
              help="Only tasks in this state (repeatable).")
@click.option("--name", "name", type=UTF8_TEXT, metavar="PATTERN",
              help="Only tasks whose name matches this glob (e.g. 'build-*').")
@click.option("--since", type=TIME, metavar="TIME", help="Only tasks created since TIME.")
@click.option("--until", type=TIME, metavar="TIME", help="Only tasks created before TIME.")
@click.option("--oldest-first", is_flag=True, help="Sort oldest first (default: newest first).")
@click.option("--limit", type=click.IntRange(min=1, max=SQL_INT_MAX), default=50,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
@async_command
async def list_tasks(obj: Context, states: tuple[str, ...], name: str | None,
                     since: float | None, until: float | None, oldest_first: bool, limit: int,
                     as_json: bool) -> None:
    """List tasks, newest first. TIME: an ISO date/time, or 90s, 10m, 2h, 1d ago."""
    store = await open_store(obj.settings())
    try:
        wanted = [TaskState(s.upper()) for s in states] or None
        rows = await store.list_tasks(states=wanted, limit=limit, name=name, since=since,
                                      until=until, oldest_first=oldest_first)
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
    store = await open_store(obj.settings())
    try:
        task = await find_task(store, task_id)
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
@click.option("--since", type=TIME, metavar="TIME",
              help="Only output stored since TIME (ISO date/time, or 90s, 10m, 2h, 1d ago).")
@pass_context
@async_command
async def logs(obj: Context, task_id: str, follow: bool, stream: str, tail: int | None,
               raw: bool, since: float | None) -> None:
    """Print a task's captured output."""
    streams = None if stream.lower() == "all" else [Stream.parse(stream)]
    store = await open_store(obj.settings())

    def emit(which: Stream, data: bytes) -> None:
        if raw:
            sys.stdout.buffer.write(data)
            return
        out = sys.stdout if which is Stream.STDOUT else sys.stderr
        out.write(data.decode("utf-8", errors="backslashreplace"))

    try:
        task = await find_task(store, task_id)
        if task.log_dropped_bytes:
            err_console.print(f"oneshot: {task.log_dropped_bytes} bytes of older output were "
                              "dropped by retention", highlight=False)
        query = OutputQuery(task.id, streams, since)
        async for fragment in read_output(store, query, tail=tail, follow=follow):
            emit(fragment.stream, fragment.data)
            if follow:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        sys.stdout.flush()
        await store.close()


