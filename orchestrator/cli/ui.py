"""`oneshot ui`: the web dashboard over the database (see docs/ui.md)."""

from __future__ import annotations

import os
import socket

import anyio
import click

from orchestrator.cli.app import (
    STOP_SIGNALS,
    Context,
    async_command,
    cli,
    err_console,
    fail,
    pass_context,
    persistent_settings,
)
from orchestrator.orchestrator import AsyncOrchestrator


@cli.command()
@click.option("--host", metavar="HOST",
              help="Address to listen on (default: ONESHOT_UI__HOST, else 127.0.0.1). Any "
                   "non-loopback address needs a token: ONESHOT_UI__TOKEN.")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port (default: ONESHOT_UI__PORT, else 8765; 0: any free port).")
@pass_context
@async_command
async def ui(obj: Context, host: str | None, port: int | None) -> None:
    """Serve the web dashboard: tasks, timelines, live output, cancel; JSON API under /api/.

    Runs until Ctrl-C or SIGTERM. With ONESHOT_UI__TOKEN set, every request must carry the
    token; open the dashboard once as http://HOST:PORT/?token=TOKEN.
    """
    # Imported here: FastAPI and uvicorn would slow every other command's start-up.
    from orchestrator.ui import create_app, is_loopback, listen, serve, url_of

    settings = persistent_settings(obj, "the dashboard", **{"ui.host": host, "ui.port": port})
    where = f"{settings.ui.host}:{settings.ui.port}"
    try:
        sock = listen(settings.ui.host, settings.ui.port)
    except socket.gaierror as exc:
        fail(f"cannot listen on {where}: {exc.strerror}", 2)
        raise
    except OSError as exc:
        fail(f"cannot listen on {where}: {os.strerror(exc.errno) if exc.errno else exc}", 1)
        raise
    token = settings.ui.token.get_secret_value() if settings.ui.token else None
    with sock:
        if token is None and not is_loopback(sock):
            fail(f"refusing to serve on {where} without a token: set ONESHOT_UI__TOKEN "
                 "(or ui.token in the config file), or listen on 127.0.0.1", 2)
        stopping = anyio.Event()
        async with (AsyncOrchestrator(settings, resume_workflows=False) as orch,
                anyio.create_task_group() as watchers):
            watchers.start_soon(_stop_on_signal, stopping)
            err_console.print(f"oneshot: dashboard on {url_of(sock)} (Ctrl-C to stop)",
                              highlight=False, markup=False, soft_wrap=True)
            await serve(create_app(orch, token=token, stopping=stopping), sock, stopping)
            watchers.cancel_scope.cancel()
    err_console.print("oneshot: dashboard stopped", highlight=False)


async def _stop_on_signal(stopping: anyio.Event) -> None:
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for _ in signals:
            stopping.set()
