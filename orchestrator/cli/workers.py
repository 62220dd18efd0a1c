"""`oneshot workers`: the workers sharing this database, their heartbeats and tasks."""

from __future__ import annotations

import json
import time

import click

from orchestrator import render
from orchestrator.cli.app import (
    Context,
    async_command,
    cli,
    console,
    err_console,
    open_store,
    pass_context,
)


@cli.command()
@click.option("--all", "include_stopped", is_flag=True, help="Include stopped workers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
@async_command
async def workers(obj: Context, include_stopped: bool, as_json: bool) -> None:
    """List workers: host, pid, state, heartbeat age, queues and task counts.

    A worker whose lease has expired shows as `lost`: it is presumed dead and its tasks are
    taken over by the others.
    """
    store = await open_store(obj.settings())
    try:
        rows = await store.list_workers(include_stopped=include_stopped)
    finally:
        await store.close()
    now = time.time()
    if as_json:
        click.echo(json.dumps([render.worker_json(row, now) for row in rows], indent=2))
    elif rows:
        console.print(render.workers_table(rows, now))
    else:
        err_console.print("no workers" if include_stopped else "no live workers")
