"""The dashboard as an ASGI app: the pages, their static files, the JSON API, the guard.

The app does not own the orchestrator it shows: whoever creates it opens the orchestrator (and
so the store) before and closes it after — ``oneshot ui``, or a test. The pages are plain HTML
and JavaScript shipped in the package: no build step, nothing loaded from elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from durable.exceptions import TaskNotFound
from orchestrator.cancel import CannotCancel
from orchestrator.orchestrator import AsyncOrchestrator
from orchestrator.ui import api
from orchestrator.ui.guard import Guard

STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    # Only this server's own scripts and styles run in the pages.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
DESCRIPTION = """The tasks of one Oneshot database: their state, timeline, steps and output.

Times are seconds since the epoch. Output is stored as raw bytes; each fragment comes as UTF-8
`text` (invalid bytes replaced) and, when its bytes are not valid UTF-8 alone, as `base64` too.
"""


def create_app(orch: AsyncOrchestrator, *, token: str | None = None,
               stopping: anyio.Event | None = None) -> FastAPI:
    """The dashboard over ``orch`` (open). With ``token``, every request must carry it (see
    :mod:`orchestrator.ui.guard`); setting ``stopping`` ends the live event streams."""
    app = FastAPI(title="Oneshot", version=version("oneshot"), description=DESCRIPTION,
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN
    app.state.dashboard = api.Dashboard(orch, stopping or anyio.Event())
    app.include_router(api.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", _page("index.html"), include_in_schema=False)
    app.add_api_route("/tasks/{task_id}", _page("task.html"), include_in_schema=False)
    app.add_exception_handler(TaskNotFound, _status(404))
    app.add_exception_handler(CannotCancel, _status(409))
    app.add_middleware(Guard, token=token)
    return app


def _page(name: str) -> Callable[[], Awaitable[FileResponse]]:
    async def page() -> FileResponse:
        return FileResponse(STATIC / name, headers=PAGE_HEADERS)

    return page


def _status(code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """An error of Oneshot as a JSON response with this status and its message."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, code)

    return handler
