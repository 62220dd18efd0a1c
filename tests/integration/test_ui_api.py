"""The dashboard's JSON API (`oneshot ui`) over a real store: httpx against the ASGI app, and
against a real uvicorn server where an event stream must arrive while a command prints."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest import mock

import anyio
import httpx
import pytest

from config import load_settings
from durable.records import (
    LogFragment,
    NewTask,
    StepCheckpoint,
    StepStatus,
    Stream,
    TaskKind,
    WorkerRecord,
)
from durable.states import TaskState
from orchestrator import render
from orchestrator.orchestrator import AsyncOrchestrator
from orchestrator.ui import create_app, listen, serve, url_of
from tests.support import WAIT_LIMIT, Database, make_store, sqlite_only

BASE = "http://127.0.0.1:8765"
TOKEN = "s3cret-token-for-tests"
Client = httpx.AsyncClient
Body = Callable[[AsyncOrchestrator, Client], Awaitable[None]]


@contextlib.asynccontextmanager
async def dashboard(database: Database, *, token: str | None = None,
                    stopping: anyio.Event | None = None
                    ) -> AsyncIterator[tuple[AsyncOrchestrator, Client]]:
    """An orchestrator on ``database``, the dashboard app over it, and a client of the app."""
    settings = load_settings(overrides=database.overrides())
    async with AsyncOrchestrator(settings, store=make_store(database)) as orch:
        app = create_app(orch, token=token, stopping=stopping)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=BASE) as client:
            yield orch, client


def run(database: Database, body: Body, **options: Any) -> None:
    async def main() -> None:
        with anyio.fail_after(WAIT_LIMIT * 2):
            async with dashboard(database, **options) as (orch, client):
                await body(orch, client)

    anyio.run(main)


async def new_task(orch: AsyncOrchestrator, name: str, **fields: Any) -> str:
    task_id = uuid.uuid4().hex
    values: dict[str, Any] = {"kind": TaskKind.COMMAND, "argv": ["true"], **fields}
    await orch.store.create_task(NewTask(id=task_id, name=name, **values), reason="queued")
    return task_id


def exact_bytes(fragment: dict[str, Any]) -> bytes:
    """What a client does with a fragment's JSON: the exact bytes."""
    if fragment["base64"] is None:
        return str(fragment["text"]).encode()
    return base64.b64decode(fragment["base64"])


# -- the task list ---------------------------------------------------------------------------


def test_task_list_is_newest_first_filtered_and_paged_without_skipping_ties(
        database: Database) -> None:
    """GET /api/tasks pages newest first by cursor (tasks created at one instant included),
    and filters by state and name glob."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        ids = []
        for i in range(5):  # pairs created at the same instant
            with mock.patch.object(time, "time", lambda i=i: 1_700_000_000.0 + i // 2):
                ids.append(await new_task(orch, f"build-{i}" if i % 2 else f"test-{i}"))
        await orch.store.transition(ids[1], TaskState.CREATED, TaskState.RUNNING)
        names: list[str] = []
        before = None
        while True:
            params = {"limit": 2, **({"before": before} if before else {})}
            page = (await client.get("/api/tasks", params=params)).json()
            names += [task["name"] for task in page["tasks"]]
            before = page["next"]
            if before is None:
                break
        everything = (await client.get("/api/tasks")).json()
        assert names == [task["name"] for task in everything["tasks"]]
        assert sorted(names) == ["build-1", "build-3", "test-0", "test-2", "test-4"]
        assert everything["tasks"][0]["name"] == "test-4" and everything["next"] is None
        running = (await client.get("/api/tasks", params={"state": "RUNNING"})).json()
        assert [task["name"] for task in running["tasks"]] == ["build-1"]
        both = await client.get("/api/tasks", params=[("state", "RUNNING"), ("state", "CREATED")])
        assert len(both.json()["tasks"]) == 5
        builds = (await client.get("/api/tasks", params={"name": "build-*"})).json()
        assert [task["name"] for task in builds["tasks"]] == ["build-3", "build-1"]
        assert set(builds["tasks"][0]) == set(render.task_json(
            await orch.store.get_task(ids[3]), [], [])) - {"transitions", "steps"}

    run(database, body)


@sqlite_only
@pytest.mark.parametrize("params", [{"state": "SLEEPING"}, {"limit": 0}, {"limit": 501},
                                    {"before": "yesterday"}, {"before": "1.5_nothex"}])
def test_bad_list_parameters_are_422(database: Database, params: dict[str, Any]) -> None:
    """A bad state, limit or cursor is refused with 422 and says which parameter."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        response = await client.get("/api/tasks", params=params)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"][:2] == ["query", next(iter(params))]

    run(database, body)


# -- one task --------------------------------------------------------------------------------


def test_task_detail_has_timeline_steps_and_output_size(database: Database) -> None:
    """GET /api/tasks/{id} (a prefix works) is `oneshot show --json` plus the output size."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        task_id = await new_task(orch, "flow", kind=TaskKind.WORKFLOW, argv=None,
                                 workflow="flow", input="{}")
        await orch.store.transition(task_id, TaskState.CREATED, TaskState.RUNNING,
                                    reason="starting")
        now = time.time()
        await orch.store.save_step(StepCheckpoint(task_id, 0, "fetch", StepStatus.COMPLETED,
                                                  now - 1, now, attempts=2, result="1"))
        await orch.store.append_logs([LogFragment(task_id, Stream.STDOUT, 0, now, b"hello\n")])
        response = await client.get(f"/api/tasks/{task_id[:8]}")
        assert response.status_code == 200
        detail = response.json()
        task = await orch.store.get_task(task_id)
        expected = render.task_json(task, await orch.store.history(task_id),
                                    await orch.store.load_steps(task_id))
        assert {key: detail[key] for key in expected} == json.loads(json.dumps(expected))
        assert detail["output"] == {"fragments": 1, "bytes": 6, "dropped_bytes": 0}
        assert [row["to_state"] for row in detail["transitions"]] == ["CREATED", "RUNNING"]
        assert detail["steps"][0]["name"] == "fetch" and detail["steps"][0]["attempts"] == 2

    run(database, body)


@sqlite_only
@pytest.mark.parametrize("path", ["/api/tasks/{id}", "/api/tasks/{id}/logs",
                                  "/api/tasks/{id}/logs/stream"])
@pytest.mark.parametrize("task_id", ["0" * 32, "abc", "not-an-id"])
def test_unknown_task_is_404_with_a_message(database: Database, path: str,
                                            task_id: str) -> None:
    """An id that names no task is a 404 JSON answer naming it, event streams included."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        response = await client.get(path.format(id=task_id))
        assert response.status_code == 404
        assert response.json() == {"detail": f"no such task: {task_id}"}
        cancelled = await client.post(f"/api/tasks/{task_id}/cancel")
        assert cancelled.status_code == 404

    run(database, body)


# -- output ----------------------------------------------------------------------------------


def test_logs_keep_streams_and_exact_bytes_not_utf8_or_split(database: Database) -> None:
    """Fragments come in seq order with their stream; text is exact UTF-8, and bytes that are
    not valid UTF-8 alone (garbage, a character split across fragments) come as base64 too."""
    split = "☃ split\n".encode()
    chunks = [(Stream.STDOUT, "héllo\n".encode()), (Stream.STDERR, b"\xff\xfe\x00bad\n"),
              (Stream.STDOUT, split[:2]), (Stream.STDOUT, split[2:])]

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        task_id = await new_task(orch, "bytes")
        await orch.store.append_logs([LogFragment(task_id, stream, seq, time.time(), data)
                                      for seq, (stream, data) in enumerate(chunks)])
        page = (await client.get(f"/api/tasks/{task_id}/logs")).json()
        assert page["more"] is False
        fragments = page["fragments"]
        assert [(f["seq"], f["stream"]) for f in fragments] == [
            (0, "stdout"), (1, "stderr"), (2, "stdout"), (3, "stdout")]
        assert [exact_bytes(f) for f in fragments] == [data for _, data in chunks]
        assert fragments[0] == {**fragments[0], "text": "héllo\n", "base64": None, "size": 7}
        assert fragments[1]["text"] == "\ufffd\ufffd\x00bad\n" and fragments[1]["base64"]
        assert all(f["base64"] for f in fragments[2:])
        stderr = (await client.get(f"/api/tasks/{task_id}/logs", params={"stream": "stderr"}))
        assert [f["seq"] for f in stderr.json()["fragments"]] == [1]

    run(database, body)


def test_large_output_is_paged_by_bytes_both_ways(database: Database) -> None:
    """Pages never exceed max_bytes unless one fragment alone does; walking forwards or
    backwards from the tail returns every byte once, in order."""
    sizes = [64 * 1024] * 24 + [1_500_000] + [10] * 300 + [200_000] * 3
    data = [bytes([65 + seq % 26]) * size for seq, size in enumerate(sizes)]

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        task_id = await new_task(orch, "big")
        await orch.store.append_logs([LogFragment(task_id, Stream.STDOUT, seq, time.time(), d)
                                      for seq, d in enumerate(data)])
        logs = f"/api/tasks/{task_id}/logs"

        def check(page: dict[str, Any]) -> list[bytes]:
            got = [exact_bytes(f) for f in page["fragments"]]
            assert got and (sum(map(len, got)) <= 256 * 1024 or len(got) == 1)
            assert len(got) <= 200
            return got

        forward: list[bytes] = []
        page = (await client.get(logs)).json()
        forward += check(page)
        while page["more"]:
            page = (await client.get(logs, params={"after_seq": page["fragments"][-1]["seq"]}
                                     )).json()
            forward += check(page)
        assert forward == data
        backward: list[bytes] = []
        page = (await client.get(logs, params={"tail": True})).json()
        backward = check(page) + backward
        pages = 1
        while page["more"]:
            page = (await client.get(logs, params={"before_seq": page["fragments"][0]["seq"]}
                                     )).json()
            backward = check(page) + backward
            pages += 1
        assert backward == data
        assert pages == 11  # 200K, 200K, 200K + 199 tiny, 101 tiny, 1.5M alone, 6 x 4 x 64K
        small = (await client.get(logs, params={"limit": 3, "after_seq": 30})).json()
        assert [f["seq"] for f in small["fragments"]] == [31, 32, 33] and small["more"]
        mixed = await client.get(logs, params={"after_seq": 3, "tail": True})
        assert mixed.status_code == 422 and "after_seq" in mixed.json()["detail"]
        too_small = await client.get(logs, params={"max_bytes": 10})
        assert too_small.status_code == 422

    run(database, body)


@contextlib.asynccontextmanager
async def served(orch: AsyncOrchestrator, stopping: anyio.Event) -> AsyncIterator[str]:
    """The dashboard on a real uvicorn server on a free loopback port; its URL."""
    sock = listen("127.0.0.1", 0)
    with sock:
        async with anyio.create_task_group() as group:
            group.start_soon(serve, create_app(orch, stopping=stopping), sock, stopping)
            try:
                yield url_of(sock)
            finally:
                stopping.set()


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events as {"event", "id", "data"} dicts (comments skipped)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            event[key] = json.loads(value) if key == "data" else value


def test_event_stream_follows_a_running_command_live_and_resumes(database: Database) -> None:
    """Over real HTTP, log events arrive while the command still prints (stdout and stderr
    told apart), state changes arrive as task events, `end` closes the stream; with
    Last-Event-ID a new stream resumes after that fragment."""
    script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.3; done; echo done >&2"

    async def main() -> None:
        stopping = anyio.Event()
        settings = load_settings(overrides=database.overrides())
        with anyio.fail_after(WAIT_LIMIT * 2):
            async with AsyncOrchestrator(settings, store=make_store(database)) as orch, \
                    served(orch, stopping) as url, httpx.AsyncClient(base_url=url) as client:
                handle = await orch.submit(["sh", "-c", script], name="printer")
                received: list[dict[str, Any]] = []
                live_lines = 0
                async with client.stream("GET", f"/api/tasks/{handle.id}/logs/stream") as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    async for event in sse_events(response):
                        received.append(event)
                        if event["event"] == "log" and not handle.done:
                            live_lines += event["data"]["text"].count("line")
                assert live_lines >= 2, received
                logs = [e for e in received if e["event"] == "log"]
                text = "".join(e["data"]["text"] for e in logs if e["data"]["stream"] == "stdout")
                assert text == "".join(f"line {i}\n" for i in range(1, 7))
                assert [e["data"]["text"] for e in logs if e["data"]["stream"] == "stderr"] == [
                    "done\n"]
                assert [e["id"] for e in logs] == [str(e["data"]["seq"]) for e in logs]
                states = [e["data"]["state"] for e in received if e["event"] == "task"]
                assert states[-1] == "COMPLETED" and "RUNNING" in states
                assert received[-1] == {"event": "end", "data": {"state": "COMPLETED"}}
                resumed = await client.get(f"/api/tasks/{handle.id}/logs/stream",
                                           headers={"Last-Event-ID": logs[1]["id"]})
                again = [json.loads(line[6:]) for line in resumed.text.splitlines()
                         if line.startswith("data: ") and '"seq"' in line]
                assert [f["seq"] for f in again] == [e["data"]["seq"] for e in logs[2:]]

    anyio.run(main)


@sqlite_only
def test_event_streams_end_when_the_server_stops(database: Database) -> None:
    """Setting `stopping` ends an open stream of a task that never ends, so shutdown does not
    wait for the browser."""

    async def main() -> None:
        stopping = anyio.Event()
        settings = load_settings(overrides=database.overrides())
        with anyio.fail_after(WAIT_LIMIT):
            async with AsyncOrchestrator(settings, store=make_store(database)) as orch, \
                    served(orch, stopping) as url, httpx.AsyncClient(base_url=url) as client:
                task_id = await new_task(orch, "queued")
                async with client.stream("GET", f"/api/tasks/{task_id}/logs/stream") as response:
                    async for event in sse_events(response):
                        assert event["event"] == "task"
                        stopping.set()

    anyio.run(main)


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_a_queued_task_then_409_once_ended(database: Database) -> None:
    """POST cancel ends a queued task INTERRUPTED at once; cancelling it again is a 409."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        task_id = await new_task(orch, "queued")
        response = await client.post(f"/api/tasks/{task_id}/cancel")
        assert response.status_code == 200
        assert response.json()["state"] == "INTERRUPTED"
        assert response.json()["transitions"][-1]["reason"] == "cancelled before it ran"
        again = await client.post(f"/api/tasks/{task_id}/cancel")
        assert again.status_code == 409
        assert again.json() == {"detail": f"cannot cancel task {task_id}: it already ended "
                                          "INTERRUPTED"}

    run(database, body)


def test_cancel_a_running_command(database: Database) -> None:
    """POST cancel stops a running command through its shim; the answer is the ended task."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        handle = await orch.submit(["sleep", "30"], name="sleeper")
        with anyio.fail_after(WAIT_LIMIT):  # cancel_task needs the shim's recorded handle
            while await orch.store.get_process(handle.id) is None:
                await anyio.sleep(0.05)
        response = await client.post(f"/api/tasks/{handle.id}/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "INTERRUPTED"
        assert (await handle.outcome()).state is TaskState.INTERRUPTED

    run(database, body)


@sqlite_only
def test_cancel_a_workflow_running_elsewhere_is_409(database: Database) -> None:
    """A running workflow cannot be stopped from another process: 409 says so."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        task_id = await new_task(orch, "flow", kind=TaskKind.WORKFLOW, argv=None,
                                 workflow="flow", input="{}")
        await orch.store.transition(task_id, TaskState.CREATED, TaskState.RUNNING)
        response = await client.post(f"/api/tasks/{task_id}/cancel")
        assert response.status_code == 409
        assert "stopping a running workflow from another process is not supported" in (
            response.json()["detail"])

    run(database, body)


# -- workers, schema, pages ------------------------------------------------------------------


@sqlite_only
def test_workers_are_listed(database: Database) -> None:
    """GET /api/workers is `oneshot workers --json`; ?all=true includes stopped ones."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        now = time.time()
        for name, state in (("w1", "active"), ("w2", "stopped")):
            await orch.store.save_worker(WorkerRecord(name, "host", 1, ["default"], 2, state,
                                                      now, now, now + 30))
        live = (await client.get("/api/workers")).json()
        assert [(w["id"], w["state"], w["running"]) for w in live] == [("w1", "active", 0)]
        every = (await client.get("/api/workers", params={"all": "true"})).json()
        assert {w["id"] for w in every} == {"w1", "w2"}

    run(database, body)


@sqlite_only
def test_openapi_schema_documents_the_api_and_no_cdn_pages(database: Database) -> None:
    """/openapi.json lists every API path with its responses; /docs (a CDN page) is off."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        schema = (await client.get("/openapi.json")).json()
        assert set(schema["paths"]) == {
            "/api/tasks", "/api/tasks/{task_id}", "/api/tasks/{task_id}/logs",
            "/api/tasks/{task_id}/logs/stream", "/api/tasks/{task_id}/cancel", "/api/workers"}
        detail = schema["paths"]["/api/tasks/{task_id}"]["get"]["responses"]
        assert set(detail) >= {"200", "404", "422"}
        assert "409" in schema["paths"]["/api/tasks/{task_id}/cancel"]["post"]["responses"]
        assert "TaskDetail" in schema["components"]["schemas"]
        assert (await client.get("/docs")).status_code == 404

    run(database, body)


@sqlite_only
def test_pages_and_static_files_ship_in_the_package(database: Database) -> None:
    """The list and task pages and their scripts are served, with a same-origin-only CSP."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        index = await client.get("/")
        assert index.status_code == 200 and "<title>Oneshot · tasks</title>" in index.text
        assert "default-src 'self'" in index.headers["content-security-policy"]
        page = await client.get(f"/tasks/{uuid.uuid4().hex}")
        assert page.status_code == 200 and "/static/task.js" in page.text
        for name in ("common.js", "list.js", "task.js", "style.css"):
            assert (await client.get(f"/static/{name}")).status_code == 200
        assert "http" not in (await client.get("/static/style.css")).text

    run(database, body)


# -- who may use it --------------------------------------------------------------------------


@sqlite_only
def test_with_a_token_every_request_needs_it(database: Database) -> None:
    """With a token: 401 without it (API, pages, static files); a bearer header, ?token= or
    the cookie set by opening a page with ?token= (then redirected without it) let in."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        for path in ("/api/tasks", "/", "/static/task.js", "/openapi.json"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
        assert "ONESHOT_UI__TOKEN" in (await client.get("/api/tasks")).json()["detail"]
        wrong = await client.get("/api/tasks", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        bearer = await client.get("/api/tasks", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200
        assert (await client.get("/api/tasks", params={"token": TOKEN})).status_code == 200
        opened = await client.get("/", params={"token": TOKEN, "state": "FAILED"})
        assert opened.status_code == 303 and opened.headers["location"] == "/?state=FAILED"
        assert "httponly" in opened.headers["set-cookie"].lower()
        assert (await client.get("/")).status_code == 200  # the client keeps the cookie
        assert (await client.get("/static/task.js")).status_code == 200
        assert TOKEN not in (await client.get("/")).text

    run(database, body, token=TOKEN)


@sqlite_only
def test_without_a_token_foreign_hosts_and_origins_are_refused(database: Database) -> None:
    """Without a token: a non-loopback Host (DNS rebinding) is refused, and so is a cancel
    sent by a page of another origin; a same-origin one goes through."""

    async def body(orch: AsyncOrchestrator, client: Client) -> None:
        task_id = await new_task(orch, "queued")
        rebound = await client.get("/api/tasks", headers={"Host": "attacker.example:8765"})
        assert rebound.status_code == 403
        assert (await client.get("/api/tasks", headers={"Host": "localhost:8765"})
                ).status_code == 200
        forged = await client.post(f"/api/tasks/{task_id}/cancel",
                                   headers={"Origin": "http://attacker.example"})
        assert forged.status_code == 403
        assert (await orch.store.get_task(task_id)).state is TaskState.CREATED
        same = await client.post(f"/api/tasks/{task_id}/cancel", headers={"Origin": BASE})
        assert same.status_code == 200

    run(database, body)
