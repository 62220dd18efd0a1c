"""The JSON API under ``/api/``: tasks, their output (in pages and live), cancel, workers.

Task ids may be given as a unique prefix, as on the command line. Errors are JSON objects with
a ``detail``: 404 for an unknown task, 409 for a task that cannot be cancelled, 422 for bad
parameters.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import anyio
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from durable.records import Stream, TaskRecord
from durable.states import TaskState
from orchestrator import render
from orchestrator.cancel import cancel_task
from orchestrator.orchestrator import AsyncOrchestrator
from orchestrator.ui.events import task_events
from orchestrator.ui.reads import (
    CURSOR_PATTERN,
    PageQuery,
    fragment_json,
    read_page,
    task_detail,
    task_page,
)
from orchestrator.ui.schemas import LogPage, Problem, TaskDetail, TaskPage, WorkerOut

DEFAULT_PAGE_BYTES = 256 * 1024
MAX_PAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Dashboard:
    """What the routes work with; kept in ``app.state.dashboard``."""

    orch: AsyncOrchestrator
    """Its store serves every read; cancelling needs the orchestrator itself."""
    stopping: anyio.Event
    """Set when the server shuts down: live streams end."""


def dashboard(request: Request) -> Dashboard:
    return cast(Dashboard, request.app.state.dashboard)


async def existing_task(
    board: Annotated[Dashboard, Depends(dashboard)],
    task_id: Annotated[str, Path(description="a task id or a unique prefix of one")],
) -> TaskRecord:
    """The task, or 404 (raised before a response starts, so event streams get it too)."""
    return await board.orch.store.get_task(task_id)


Board = Annotated[Dashboard, Depends(dashboard)]
Task = Annotated[TaskRecord, Depends(existing_task)]
StreamName = Literal["stdout", "stderr", "all"]
StreamParam = Annotated[StreamName, Query(description="which output stream")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem,
                                                    "description": "no such task"}}

router = APIRouter(prefix="/api")


@router.get("/tasks", response_model=TaskPage, tags=["tasks"])
async def list_tasks(
    board: Board,
    state: Annotated[list[TaskState] | None, Query(description="only tasks in these states "
                                                               "(repeatable)")] = None,
    name: Annotated[str | None, Query(description="only names matching this glob, "
                                                  "e.g. build-*")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[str | None, Query(pattern=CURSOR_PATTERN,
                                        description="the `next` of the previous page")] = None,
) -> dict[str, Any]:
    """Tasks, newest first, a page at a time."""
    return await task_page(board.orch.store, states=state, name=name, limit=limit,
                           before=before)


@router.get("/tasks/{task_id}", response_model=TaskDetail, responses=NOT_FOUND, tags=["tasks"])
async def get_task(board: Board, task: Task) -> dict[str, Any]:
    """One task: its state, its timeline of transitions, its steps, how much output it has."""
    return await task_detail(board.orch.store, task)


@router.get("/tasks/{task_id}/logs", response_model=LogPage, responses=NOT_FOUND,
            tags=["output"])
async def get_logs(
    board: Board,
    task: Task,
    after_seq: Annotated[int | None, Query(ge=-1, description="the fragments after this seq "
                                                              "(default: from the start)")] = None,
    before_seq: Annotated[int | None, Query(ge=0, description="the newest fragments before "
                                                              "this seq (page backwards)")] = None,
    tail: Annotated[bool, Query(description="the newest fragments (the end of the output)")
                    ] = False,
    stream: StreamParam = "all",
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many fragments")] = 200,
    max_bytes: Annotated[int, Query(ge=1024, le=MAX_PAGE_BYTES,
                                    description="at most this many bytes, but at least one "
                                                "fragment")] = DEFAULT_PAGE_BYTES,
) -> dict[str, Any]:
    """A page of a task's stored output, forwards from `after_seq` or backwards from the end
    (`tail`) or from `before_seq`."""
    backward = tail or before_seq is not None
    if backward and after_seq is not None:
        raise HTTPException(422, "after_seq pages forwards; it cannot be combined with "
                                 "before_seq or tail")
    query = PageQuery(task.id, _streams(stream), limit, max_bytes)
    page = await read_page(board.orch.store, query, after_seq=-1 if after_seq is None
                           else after_seq, before_seq=before_seq, backward=backward)
    return {"fragments": [fragment_json(f) for f in page.fragments], "more": page.more}


@router.get("/tasks/{task_id}/logs/stream", response_class=EventSourceResponse,
            responses=NOT_FOUND, tags=["output"])
async def stream_logs(
    board: Board,
    task: Task,
    after_seq: Annotated[int, Query(ge=-1, description="send the fragments after this seq, "
                                                       "then new ones")] = -1,
    stream: StreamParam = "all",
    last_event_id: Annotated[int | None, Header(ge=-1, description="set by a reconnecting "
                                                                   "EventSource; wins over "
                                                                   "after_seq")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: `task` (the detail, whenever it changes), `log` (a fragment, its
    seq as the event id) and `end` (the task ended and all output was sent)."""
    query = PageQuery(task.id, _streams(stream), 1000, DEFAULT_PAGE_BYTES)
    start = after_seq if last_event_id is None else last_event_id
    async for event in task_events(board.orch.store, query, start, board.stopping):
        yield event


@router.post("/tasks/{task_id}/cancel", response_model=TaskDetail,
             responses={**NOT_FOUND, 409: {"model": Problem,
                                           "description": "the task cannot be cancelled"}},
             tags=["tasks"])
async def cancel(board: Board, task: Task) -> dict[str, Any]:
    """Stop a task, whichever process runs it, and return it once it has ended: a queued one
    at once, a running command through its supervisor (SIGTERM to its process group, SIGKILL
    after its grace). A workflow running in another process cannot be stopped from here."""
    ended = await cancel_task(board.orch, task)
    return await task_detail(board.orch.store, ended)


@router.get("/workers", response_model=list[WorkerOut], tags=["workers"])
async def list_workers(
    board: Board,
    include_stopped: Annotated[bool, Query(alias="all", description="include stopped workers")
                               ] = False,
) -> list[dict[str, Any]]:
    """Workers sharing this database, by last heartbeat (as `oneshot workers`)."""
    now = time.time()
    rows = await board.orch.store.list_workers(include_stopped=include_stopped)
    return [render.worker_json(row, now) for row in rows]


def _streams(name: StreamName) -> list[Stream] | None:
    return None if name == "all" else [Stream.parse(name)]
