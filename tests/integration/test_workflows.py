"""Durable workflows in process: checkpoints, replay, failures, retries, recovery of orphans.

Workflows run inside an :class:`AsyncOrchestrator` on each store kind of the ``database``
fixture: a real SQLite file under ``tmp_path``, a PostgreSQL schema and, unless a test is
marked ``persisted_only``, the in-memory store with persistence off. A resume is crafted in
process: a copy of a finished run (same workflow, same input, same checkpoints) is created with
an owner that is gone, and ``orch.recover()`` resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from config import OneshotSettings, load_settings
from durable import (
    NonDeterminismError,
    RetryPolicy,
    SerializationError,
    StepFailed,
    WorkflowFailed,
    durable,
    workflow,
)
from durable.naming import qualified_name
from durable.records import NewTask, StepCheckpoint, StepStatus, TaskKind
from durable.serialization import load
from durable.states import TaskState
from orchestrator import AsyncOrchestrator, TaskHandle
from orchestrator.task import TaskResult
from tests.replay_support import facts, same
from tests.support import Database, make_store, persisted_only
from tests.support import orchestrate as run_orchestrated

WAIT_LIMIT = 15.0
GONE_OWNER = f"{socket.gethostname()}:{os.getpid()}:gone00"
"""An owner on this host and pid that is no live orchestrator: its tasks are orphans."""


class Address(BaseModel):
    city: str
    zip_code: str


class Customer(BaseModel):
    name: str
    since: dt.date
    addresses: list[Address]


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str | None = None


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Loose(BaseModel):
    """A model whose field takes anything, things that cannot be stored included."""

    anything: Any


class NeedsTwoArguments(Exception):
    """An exception that cannot be rebuilt from its message alone."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")


class FakeSleep:
    """Records the backoff waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_settings(database: Database, **overrides: Any) -> OneshotSettings:
    return load_settings(overrides={
        **database.overrides(),
        "retry.initial_backoff": 0,
        "retry.jitter": 0,
        **overrides,
    })


@pytest.fixture
def settings(database: Database) -> OneshotSettings:
    """Settings on the test's database (persistence off for the in-memory kind)."""
    return make_settings(database)


def orchestrate(settings: OneshotSettings,
                body: Callable[[AsyncOrchestrator], Awaitable[Any]]) -> Any:
    """Run ``body`` in an orchestrator; with persistence off, check no database appeared."""
    result = run_orchestrated(settings, body)
    if not settings.persistence.enabled:
        assert not Path(settings.database.url.removeprefix("sqlite+aiosqlite:///")).exists()
    return result


async def create_orphan(orch: AsyncOrchestrator, workflow_name: str, input_json: str,
                        steps: Sequence[StepCheckpoint] = ()) -> str:
    """A workflow task RUNNING under an owner that is gone, with ``steps`` as its checkpoints."""
    task = NewTask(id=uuid.uuid4().hex, kind=TaskKind.WORKFLOW, name=workflow_name,
                   workflow=workflow_name, input=input_json, owner=GONE_OWNER)
    await orch.store.create_task(task, reason="crafted", worker=GONE_OWNER)
    await orch.store.transition(task.id, TaskState.CREATED, TaskState.RUNNING,
                                reason="crafted", worker=GONE_OWNER)
    for step in steps:
        await orch.store.save_step(dataclasses.replace(step, task_id=task.id))
    return task.id


async def orphan_copy(orch: AsyncOrchestrator, task_id: str) -> str:
    """A crashed twin of a finished run: same workflow, input and checkpoints."""
    record = await orch.store.get_task(task_id)
    assert record.workflow is not None and record.input is not None
    return await create_orphan(orch, record.workflow, record.input,
                               await orch.store.load_steps(task_id))


async def recover_one(orch: AsyncOrchestrator, task_id: str) -> TaskHandle:
    """``orch.recover()``, which must resume ``task_id``; its handle."""
    handles = {handle.id: handle for handle in await orch.recover()}
    assert task_id in handles
    return handles[task_id]


def checkpoint(seq: int, name: str, result: str) -> StepCheckpoint:
    return StepCheckpoint(task_id="", seq=seq, name=name, status=StepStatus.COMPLETED,
                          started_at=0.0, finished_at=0.0, result=result)


def stored_error(error: str | None) -> dict[str, Any]:
    """A stored error's JSON without what only displays it (its traceback) or rebuilds it."""
    assert error is not None
    data: dict[str, Any] = json.loads(error)
    return {key: value for key, value in data.items()
            if key not in ("traceback", "attrs", "cause")}


def error_of(outcome: TaskResult) -> dict[str, str]:
    assert outcome.error is not None
    data: dict[str, str] = json.loads(outcome.error)
    return data


# --- results and replay ---------------------------------------------------------------------


def test_step_results_come_back_as_their_declared_types_on_replay(
        settings: OneshotSettings) -> None:
    """Pydantic models, dataclasses and builtins survive the checkpoint round trip."""
    customer = Customer(name="Ada", since=dt.date(2020, 1, 2),
                        addresses=[Address(city="Paris", zip_code="75001")])
    calls: Counter[str] = Counter()
    seen: list[list[Any]] = []

    @durable
    async def get_customer(who: Customer) -> Customer:
        calls["customer"] += 1
        return who

    @durable
    async def get_point() -> Point:
        calls["point"] += 1
        return Point(1.5, -2.0, "origin-ish")

    @durable
    def get_builtins() -> tuple[dict[str, list[int]], set[int], str | None, float]:
        calls["builtins"] += 1
        return {"a": [1, 2]}, {3, 4}, None, 0.25

    @workflow
    async def collect(who: Customer) -> int:
        values = [await get_customer(who), await get_point(), await get_builtins()]
        seen.append(values)
        return len(values)

    async def body(orch: AsyncOrchestrator) -> None:
        first = await orch.start(collect, customer)
        assert await first.result() == 3
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        assert await replay.result() == 3

    orchestrate(settings, body)
    assert calls == {"customer": 1, "point": 1, "builtins": 1}
    original, replayed = seen
    assert replayed == original == [customer, Point(1.5, -2.0, "origin-ish"),
                                    ({"a": [1, 2]}, {3, 4}, None, 0.25)]
    assert [type(v) for v in replayed] == [Customer, Point, tuple]
    assert type(replayed[0].addresses[0]) is Address
    assert type(replayed[2][1]) is set


def test_replay_returns_stored_results_without_running_the_steps(
        settings: OneshotSettings) -> None:
    """Completed checkpoints are returned as stored; only steps past them run."""
    calls: Counter[str] = Counter()

    @durable(name="replay.double")
    async def double(x: int) -> int:
        calls["double"] += 1
        return 2 * x

    @durable(name="replay.label")
    async def label(x: int) -> str:
        calls["label"] += 1
        return f"value {x}"

    @workflow(name="replay.pipeline")
    async def pipeline(x: int) -> str:
        return await label(await double(await double(x)))

    async def body(orch: AsyncOrchestrator) -> tuple[str, list[StepCheckpoint]]:
        # Stored results no body would compute, so the test tells replay from re-execution.
        task_id = await create_orphan(orch, "replay.pipeline", '{"x": 1}', [
            checkpoint(0, "replay.double", "100"), checkpoint(1, "replay.double", "1000"),
        ])
        handle = await recover_one(orch, task_id)
        return await handle.result(), await orch.store.load_steps(task_id)

    result, steps = orchestrate(settings, body)
    assert result == "value 1000"
    assert calls == {"label": 1}
    assert [(s.seq, s.name, s.result) for s in steps] == [
        (0, "replay.double", "100"), (1, "replay.double", "1000"),
        (2, "replay.label", '"value 1000"'),
    ]


def test_workflow_called_inside_an_orchestrator_runs_durably(
        settings: OneshotSettings) -> None:
    """`await wf(x)` in the block creates a workflow task, checkpoints it, returns the value."""

    @durable
    async def square(x: int) -> int:
        return x * x

    @workflow
    async def squares(n: int) -> list[int]:
        return [await square(i) for i in range(n)]

    async def body(orch: AsyncOrchestrator) -> Any:
        assert await squares(4) == [0, 1, 4, 9]
        (task,) = await orch.store.list_tasks()
        return task, await orch.store.load_steps(task.id)

    task, steps = orchestrate(settings, body)
    assert (task.kind, task.state, task.result) == ("workflow", TaskState.COMPLETED, "[0,1,4,9]")
    assert json.loads(task.input) == {"n": 4}
    assert [s.result for s in steps] == ["0", "1", "4", "9"]


def test_workflow_called_without_an_orchestrator_just_runs() -> None:
    """Outside an orchestrator a workflow and its steps are plain async calls."""

    @durable
    async def inc(x: int) -> int:
        return x + 1

    @workflow
    async def twice(x: int) -> int:
        return await inc(await inc(x))

    assert anyio.run(twice, 1) == 3


# --- failures ---------------------------------------------------------------------------------


def test_stored_step_failure_is_reraised_with_its_original_type_and_message(
        settings: OneshotSettings) -> None:
    """A step that failed is not run again on replay: its exception is raised again."""
    calls: Counter[str] = Counter()

    @durable
    async def parse(text: str) -> int:
        calls["parse"] += 1
        raise ValueError(f"bad input {text!r}")

    @workflow
    async def tolerant(text: str) -> str:
        try:
            await parse(text)
        except ValueError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "parsed"

    async def body(orch: AsyncOrchestrator) -> tuple[str, str, list[StepCheckpoint]]:
        first = await orch.start(tolerant, "x42")
        result = await first.result()
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        return result, await replay.result(), await orch.store.load_steps(first.id)

    first, replayed, steps = orchestrate(settings, body)
    assert first == replayed == "ValueError: bad input 'x42'"
    assert calls == {"parse": 1}
    (step,) = steps
    assert (step.status, step.attempts, step.result) == (StepStatus.FAILED, 1, None)
    assert stored_error(step.error) == {
        "type": "ValueError", "module": "builtins", "message": "bad input 'x42'",
        "args": ["bad input 'x42'"], "rebuildable": True}


def test_stored_failure_of_an_unrebuildable_type_is_reraised_as_step_failed(
        settings: OneshotSettings) -> None:
    """An exception replay cannot rebuild (its class is local) is StepFailed, carrying its
    type, args and message, on the first run (chained from it) and on replay alike."""
    caught: list[BaseException] = []

    class Unimportable(Exception):
        """Defined inside a function: no other process can find it by name."""

    @durable(name="failing.lookup")
    async def lookup() -> int:
        raise Unimportable(404, "no such record")

    @workflow
    async def guarded() -> str:
        try:
            await lookup()
        except Exception as exc:
            caught.append(exc)
        return "done"

    async def body(orch: AsyncOrchestrator) -> None:
        first = await orch.start(guarded)
        assert await first.result() == "done"
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        assert await replay.result() == "done"

    orchestrate(settings, body)
    original, replayed = caught
    assert type(original) is type(replayed) is StepFailed
    assert type(original.__cause__) is Unimportable
    type_name = qualified_name(Unimportable)
    for error in (original, replayed):
        assert isinstance(error, StepFailed)
        assert (error.name, error.seq, error.error_type, error.message, error.error_args) == (
            "failing.lookup", 0, type_name, "(404, 'no such record')", (404, "no such record"))
        assert str(error) == f"step 0 'failing.lookup' failed: {type_name}: (404, 'no such record')"
    assert vars(original) == vars(replayed) and original.args == replayed.args


def test_uncaught_step_failure_fails_the_workflow(settings: OneshotSettings) -> None:
    """The workflow ends FAILED with the step's error; result() raises WorkflowFailed."""

    @durable
    async def explode() -> None:
        raise RuntimeError("boom")

    @workflow
    async def fragile() -> None:
        await explode()

    async def body(orch: AsyncOrchestrator) -> tuple[TaskResult, WorkflowFailed]:
        handle = await orch.start(fragile)
        with pytest.raises(WorkflowFailed) as failed:
            await handle.result()
        with pytest.raises(WorkflowFailed):
            await fragile()  # called directly in the block: same outcome
        return await handle.outcome(), failed.value

    outcome, failed = orchestrate(settings, body)
    assert outcome.state is TaskState.FAILED
    assert stored_error(outcome.error) == {"type": "RuntimeError", "module": "builtins",
                                           "message": "boom", "args": ["boom"],
                                           "rebuildable": True}
    assert (failed.task_id, failed.state, failed.error) == (outcome.id, "FAILED",
                                                            "RuntimeError: boom")


def test_calling_another_step_at_a_recorded_sequence_is_a_non_determinism_error(
        settings: OneshotSettings) -> None:
    """Replay after the code changed names the sequence, the recorded and the called step."""
    calls: Counter[str] = Counter()

    @durable(name="nd.fetch")
    async def fetch() -> int:
        calls["fetch"] += 1
        return 1

    @durable(name="nd.old_transform")
    async def old_transform(x: int) -> int:
        return x + 1

    @durable(name="nd.new_transform")
    async def new_transform(x: int) -> int:
        calls["new_transform"] += 1
        return x + 2

    @workflow(name="nd.pipeline")
    async def pipeline_v1() -> int:
        return await old_transform(await fetch())

    async def body(orch: AsyncOrchestrator) -> tuple[TaskResult, WorkflowFailed]:
        first = await orch.start(pipeline_v1)
        assert await first.result() == 2
        copy = await orphan_copy(orch, first.id)

        @workflow(name="nd.pipeline")  # the code changed: re-registered under the same name
        async def pipeline_v2() -> int:
            return await new_transform(await fetch())

        handle = await recover_one(orch, copy)
        with pytest.raises(WorkflowFailed) as failed:
            await handle.result()
        return await handle.outcome(), failed.value

    outcome, failed = orchestrate(settings, body)
    assert outcome.state is TaskState.FAILED
    error = error_of(outcome)
    assert error["type"] == NonDeterminismError.__name__
    expected = NonDeterminismError(outcome.id, 1, "nd.old_transform", "nd.new_transform")
    assert error["message"] == str(expected)
    for part in ("step 1", "'nd.old_transform'", "'nd.new_transform'", outcome.id):
        assert part in error["message"] and part in str(failed)
    assert calls == {"fetch": 1}  # replayed at seq 0; the new step never ran


def test_unserializable_step_result_fails_the_step_and_writes_no_checkpoint(
        settings: OneshotSettings) -> None:
    """A result pydantic cannot dump raises SerializationError before anything is committed."""
    calls: Counter[str] = Counter()
    caught: list[BaseException] = []

    @durable(name="unserializable.make")
    async def make() -> Any:
        calls["make"] += 1
        return object()

    @durable
    async def after() -> int:
        calls["after"] += 1
        return 1

    @workflow
    async def careless() -> int:
        try:
            await make()
        except SerializationError as exc:
            caught.append(exc)
            raise
        return await after()

    async def body(orch: AsyncOrchestrator) -> tuple[TaskResult, list[StepCheckpoint]]:
        handle = await orch.start(careless)
        outcome = await handle.outcome()
        return outcome, await orch.store.load_steps(handle.id)

    outcome, steps = orchestrate(settings, body)
    assert steps == []
    assert calls == {"make": 1}
    assert outcome.state is TaskState.FAILED
    assert error_of(outcome)["type"] == "SerializationError"
    (error,) = caught
    assert isinstance(error, SerializationError)
    assert error.what == "the result of step 'unserializable.make'"
    assert str(error).startswith("cannot serialize the result of step 'unserializable.make': ")


def test_unserializable_workflow_input_creates_no_task(settings: OneshotSettings) -> None:
    """start() refuses an input it cannot store, naming the argument; nothing is written."""

    @workflow
    async def takes(thing: Any) -> None:
        return None

    async def body(orch: AsyncOrchestrator) -> list[Any]:
        with pytest.raises(SerializationError, match="argument 'thing'"):
            await orch.start(takes, object())
        return await orch.store.list_tasks()

    assert orchestrate(settings, body) == []


# --- replay equals the first run -------------------------------------------------------------

REPLAYED_VALUES: dict[str, Any] = {
    "aware": dt.datetime(2024, 2, 29, 23, 59, 59, 999999,
                         tzinfo=dt.timezone(dt.timedelta(hours=-3), "BRT")),
    "naive": dt.datetime(2024, 1, 1, 12),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(8, 30, tzinfo=dt.UTC),
    "timedelta": dt.timedelta(days=-1, microseconds=7),
    "decimal": Decimal("3.14159265358979323846264338327950288"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "tuple": (1, "two", (3.0, None)),
    "set": {1, 2, 3},
    "frozenset": frozenset({"a", "b"}),
    "bytes": bytes(range(256)),
    "enum": Color.GREEN,
    "dataclass": Point(1.5, -2.0, "here"),
    "model": Customer(name="Ada", since=dt.date(2020, 1, 2),
                      addresses=[Address(city="Paris", zip_code="75001")]),
    "floats": [float("inf"), float("-inf"), float("nan"), -0.0, 1e308],
    "nested": {1: [(b"\xff\x00", {frozenset({1, 2})})], "$t": {"key": "tagged"},
               (1, "a"): {"deep": [{2.5, "x"}]}},
    "complex": complex(1.5, float("-inf")),
    "text": "caf\u00e9 \ud800 \x00",
}


def test_replayed_steps_return_what_the_first_run_got_whatever_the_annotations(
        settings: OneshotSettings) -> None:
    """Unannotated or loosely annotated, every supported value comes back from replay, and as
    the workflow's result, with its type and value."""
    calls: Counter[str] = Counter()
    seen: list[dict[str, Any]] = []

    @durable(name="exact.give")
    async def give(key):  # type: ignore[no-untyped-def]  # no annotations on purpose
        calls[key] += 1
        return REPLAYED_VALUES[key]

    @durable(name="exact.give_any")
    def give_any(key: str) -> Any:
        calls[f"any {key}"] += 1
        return REPLAYED_VALUES[key]

    @workflow(name="exact.collect")
    async def collect(keys):  # type: ignore[no-untyped-def]
        got = {key: await give(key) for key in keys}
        got.update({f"any {key}": await give_any(key) for key in keys})
        seen.append(got)
        return got

    async def body(orch: AsyncOrchestrator) -> list[Any]:
        first = await orch.start(collect, list(REPLAYED_VALUES))
        result = await first.result()
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        return [result, await replay.result()]

    results = orchestrate(settings, body)
    expected = {**REPLAYED_VALUES, **{f"any {key}": v for key, v in REPLAYED_VALUES.items()}}
    original, replayed = seen
    for got in (original, replayed, *results):
        assert same(got, expected), {k: (v, expected[k]) for k, v in got.items()
                                     if not same(v, expected[k])}
    assert set(calls.values()) == {1}, calls


def test_replayed_steps_raise_what_the_first_run_raised(settings: OneshotSettings) -> None:
    """KeyError, an exception with a two-argument __init__, OSError with errno and file names,
    several args, notes and a chained cause: same type, args, attributes and cause on replay."""
    seen: list[list[Any]] = []
    calls: Counter[int] = Counter()

    def with_notes() -> Exception:
        error = ValueError("first", 2, ["third"])
        error.add_note("a note")
        return error

    def chained() -> Exception:
        try:
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise NeedsTwoArguments(500, "outer") from inner
        except NeedsTwoArguments as outer:
            outer.retry_after = dt.timedelta(seconds=30)  # type: ignore[attr-defined]
            return outer

    errors: list[Callable[[], BaseException]] = [
        lambda: KeyError("k"),
        lambda: NeedsTwoArguments(404, "no such record"),
        lambda: FileNotFoundError(2, "No such file or directory", "in.txt"),
        lambda: OSError(18, "Invalid cross-device link", "a", None, "b"),
        with_notes,
        chained,
        lambda: subprocess.CalledProcessError(2, ["make", "all"], b"out\xff", b"err"),
        lambda: UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ]

    @durable(name="exact.fail", retry=RetryPolicy(attempts=1))
    async def fail(index):  # type: ignore[no-untyped-def]
        calls[index] += 1
        raise errors[index]()

    @workflow(name="exact.failures")
    async def failures() -> int:
        got = []
        for index in range(len(errors)):
            try:
                await fail(index)
            except Exception as exc:
                got.append(facts(exc))
        seen.append(got)
        return len(got)

    async def body(orch: AsyncOrchestrator) -> None:
        first = await orch.start(failures)
        assert await first.result() == len(errors)
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        assert await replay.result() == len(errors)

    orchestrate(settings, body)
    original, replayed = seen
    assert calls == dict.fromkeys(range(len(errors)), 1)
    assert same(original, replayed)
    assert same(original, [facts(make()) for make in errors])
    assert original[3][3] == {"errno": 18, "strerror": "Invalid cross-device link",
                              "filename": "a", "filename2": "b"}


def test_workflow_inputs_keep_their_types_when_started_and_when_resumed(
        settings: OneshotSettings) -> None:
    """Unannotated arguments (positional, *args, keyword-only, **kwargs) reach the body as
    the caller passed them, on the first run and when resumed."""
    seen: list[tuple[Any, ...]] = []
    when = dt.datetime(2030, 5, 17, 6, 0, tzinfo=dt.UTC)

    @workflow(name="exact.inputs")
    async def takes(when, pair, *rest, point, **extra):  # type: ignore[no-untyped-def]
        seen.append((when, pair, rest, point, extra))
        return None

    args = (when, ("a", 1), {1, 2}, b"\x80\x81", Color.RED)
    kwargs = {"point": Point(0.0, 1.0), "tags": frozenset({"x"}), "limit": Decimal("1.50")}

    async def body(orch: AsyncOrchestrator) -> str:
        first = await orch.start(takes, *args, **kwargs)
        await first.result()
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        await replay.result()
        record = await orch.store.get_task(first.id)
        assert record.input is not None
        return record.input

    stored = orchestrate(settings, body)
    expected = (when, ("a", 1), ({1, 2}, b"\x80\x81", Color.RED), Point(0.0, 1.0),
                {"tags": frozenset({"x"}), "limit": Decimal("1.50")})
    assert len(seen) == 2
    for got in seen:
        assert same(got, expected), got
    assert set(json.loads(stored)) == {"when", "pair", "rest", "point", "extra"}


def test_value_that_cannot_come_back_as_itself_fails_the_first_run_and_commits_nothing(
        settings: OneshotSettings) -> None:
    """A generator, a subclass of a supported type, a model holding a Path and an instance of
    a local class each raise SerializationError naming the type on the first run; no
    checkpoint is written."""
    caught: list[str] = []

    class Local:
        """Defined inside a function: no other process can find it by name."""

    class Tagged(str):
        """A str subclass: it would come back as a plain str."""

    results: list[Any] = [(n for n in range(3)), Tagged("x"), Loose(anything=Path("x")),
                          [1, {"k": Local()}]]

    @durable(name="lossy.make")
    async def make(index):  # type: ignore[no-untyped-def]
        return results[index]

    @durable(name="lossy.fine")
    async def fine() -> str:
        return "fine"

    @workflow(name="lossy.pipeline")
    async def pipeline() -> str:
        for index in range(len(results)):
            try:
                await make(index)
            except SerializationError as exc:
                caught.append(exc.problem)
        return await fine()

    async def body(orch: AsyncOrchestrator) -> list[StepCheckpoint]:
        handle = await orch.start(pipeline)
        assert await handle.result() == "fine"
        return await orch.store.load_steps(handle.id)

    steps = orchestrate(settings, body)
    assert [(s.seq, s.name) for s in steps] == [(len(results), "lossy.fine")]
    generator, subclass, model, local = caught
    assert generator.startswith("generator is not a supported type")
    assert subclass.startswith(f"{qualified_name(Tagged)} is not a supported type")
    assert model == "pathlib.PosixPath is not a supported type (at .anything)"
    assert local.startswith(f"{qualified_name(Local)} is not a supported type")
    assert local.endswith("(at [1]['k'])")


@persisted_only
def test_submit_validates_plain_json_input_into_the_annotated_types(
        database: Database, tmp_path: Path) -> None:
    """`oneshot submit --workflow --input JSON`: plain JSON becomes the parameters' annotated
    types, stored as themselves; input that does not fit exits 2, queueing nothing."""
    flow = tmp_path / "submitted_flow.py"
    flow.write_text(textwrap.dedent("""\
        import datetime as dt
        from durable import workflow

        @workflow(name="submitted.flow")
        async def flow(when: dt.datetime, pair: tuple[int, str], *, tags: set[str]) -> None:
            return None
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    env.update(database.env())

    def submit(input_json: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "oneshot"), "submit", "--import", str(flow),
             "--workflow", "submitted.flow", "--input", input_json],
            capture_output=True, timeout=WAIT_LIMIT, env=env, cwd=tmp_path, check=False)

    done = submit('{"when": "2024-01-02T03:04:05+00:00", "pair": [1, "a"], "tags": ["x"]}')
    assert done.returncode == 0, done.stderr.decode()
    task_id = done.stdout.decode().strip()
    bad = submit('{"when": "not a date", "pair": [1, "a"], "tags": []}')
    assert bad.returncode == 2
    assert "--input does not fit workflow 'submitted.flow'" in bad.stderr.decode()

    async def read() -> list[Any]:
        store = make_store(database)
        await store.open()
        try:
            return [await store.get_task(task_id), await store.list_tasks()]
        finally:
            await store.close()

    record, tasks = anyio.run(read)
    assert [task.id for task in tasks] == [task_id]
    stored = load(record.input or "")
    assert stored["when"] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert type(stored["when"]) is dt.datetime
    assert same({key: stored[key] for key in ("pair", "tags")},
                {"pair": (1, "a"), "tags": {"x"}})


def test_generator_functions_are_refused_when_decorated() -> None:
    """@durable and @workflow refuse generator functions, sync or async, naming them."""

    def numbers() -> Any:
        yield 1

    async def stream() -> Any:
        yield 1

    for decorate, fn in ((durable, numbers), (durable, stream), (workflow, stream)):
        with pytest.raises(TypeError, match=r"cannot make a .* of the generator function "
                                            rf"{qualified_name(fn)}"):
            decorate(fn)


# --- retries ----------------------------------------------------------------------------------


def test_step_retries_until_attempts_are_exhausted_and_records_them(
        settings: OneshotSettings) -> None:
    """Three attempts, all failing: the checkpoint records attempts=3, the workflow FAILED."""
    sleep = FakeSleep()
    calls: Counter[str] = Counter()

    @durable(retry=RetryPolicy(attempts=3, retry_on=(ValueError,), sleep=sleep))
    async def flaky() -> int:
        calls["flaky"] += 1
        raise ValueError(f"attempt {calls['flaky']}")

    @workflow
    async def doomed() -> int:
        return await flaky()

    async def body(orch: AsyncOrchestrator) -> tuple[TaskResult, list[StepCheckpoint]]:
        handle = await orch.start(doomed)
        return await handle.outcome(), await orch.store.load_steps(handle.id)

    outcome, (step,) = orchestrate(settings, body)
    assert calls == {"flaky": 3}
    assert len(sleep.waits) == 2
    assert (step.status, step.attempts) == (StepStatus.FAILED, 3)
    assert json.loads(step.error or "")["message"] == "attempt 3"
    assert outcome.state is TaskState.FAILED
    assert error_of(outcome)["message"] == "attempt 3"


def test_step_succeeding_on_a_retry_records_the_attempts_it_took(
        settings: OneshotSettings) -> None:
    """Failing once then succeeding: COMPLETED with attempts=2 and the value."""
    sleep = FakeSleep()
    calls: Counter[str] = Counter()

    @durable(retry=RetryPolicy(attempts=3, retry_on=(ValueError,), sleep=sleep))
    async def second_time_lucky() -> str:
        calls["lucky"] += 1
        if calls["lucky"] == 1:
            raise ValueError("not yet")
        return "ok"

    @workflow
    async def hopeful() -> str:
        return await second_time_lucky()

    async def body(orch: AsyncOrchestrator) -> tuple[str, list[StepCheckpoint]]:
        handle = await orch.start(hopeful)
        return await handle.result(), await orch.store.load_steps(handle.id)

    result, (step,) = orchestrate(settings, body)
    assert result == "ok"
    assert (step.status, step.attempts, step.result) == (StepStatus.COMPLETED, 2, '"ok"')
    assert len(sleep.waits) == 1


@persisted_only
def test_backoff_waits_grow_between_attempts(settings: OneshotSettings) -> None:
    """Exponential backoff: each wait handed to the sleep function is longer than the last."""
    sleep = FakeSleep()
    policy = RetryPolicy(attempts=5, initial_backoff=0.1, multiplier=2.0, jitter=0.0,
                         max_backoff=10.0, retry_on=(TimeoutError,), sleep=sleep)

    @durable(retry=policy)
    async def slow_service() -> None:
        raise TimeoutError("no answer")

    @workflow
    async def patient() -> None:
        await slow_service()

    async def body(orch: AsyncOrchestrator) -> list[StepCheckpoint]:
        handle = await orch.start(patient)
        await handle.outcome()
        return await orch.store.load_steps(handle.id)

    (step,) = orchestrate(settings, body)
    assert step.attempts == 5
    assert sleep.waits == pytest.approx([0.1, 0.2, 0.4, 0.8])


@persisted_only
def test_exception_not_listed_in_retry_on_is_not_retried(settings: OneshotSettings) -> None:
    """retry_on names what retries: any other exception fails the step at its first attempt."""
    sleep = FakeSleep()
    calls: Counter[str] = Counter()

    @durable(retry=RetryPolicy(attempts=5, retry_on=(ValueError,), sleep=sleep))
    async def missing_key() -> None:
        calls["missing"] += 1
        raise KeyError("id")

    @workflow
    async def strict() -> None:
        await missing_key()

    async def body(orch: AsyncOrchestrator) -> list[StepCheckpoint]:
        handle = await orch.start(strict)
        assert (await handle.outcome()).state is TaskState.FAILED
        return await orch.store.load_steps(handle.id)

    (step,) = orchestrate(settings, body)
    assert calls == {"missing": 1}
    assert sleep.waits == []
    assert (step.status, step.attempts) == (StepStatus.FAILED, 1)


@persisted_only
def test_default_retry_policy_comes_from_settings_and_retries_only_io_errors(
        database: Database) -> None:
    """Without retry=, attempts come from settings; OSError retries, ValueError does not."""
    settings = make_settings(database, **{"retry.attempts": 4})
    calls: Counter[str] = Counter()

    @durable
    async def unreachable() -> None:
        calls["connection"] += 1
        raise ConnectionRefusedError("refused")

    @durable
    async def invalid() -> None:
        calls["value"] += 1
        raise ValueError("invalid")

    @workflow
    async def both() -> list[str]:
        errors = []
        for step in (unreachable, invalid):
            try:
                await step()
            except Exception as exc:
                errors.append(type(exc).__name__)
        return errors

    async def body(orch: AsyncOrchestrator) -> tuple[list[str], list[StepCheckpoint]]:
        handle = await orch.start(both)
        return await handle.result(), await orch.store.load_steps(handle.id)

    result, steps = orchestrate(settings, body)
    assert result == ["ConnectionRefusedError", "ValueError"]
    assert calls == {"connection": 4, "value": 1}
    assert [(s.status, s.attempts) for s in steps] == [(StepStatus.FAILED, 4),
                                                       (StepStatus.FAILED, 1)]


def test_durable_outside_a_workflow_just_runs_with_its_retries() -> None:
    """No workflow, no orchestrator: the step runs (sync ones too), retried by its policy."""
    sleep = FakeSleep()
    calls: Counter[str] = Counter()

    @durable(retry=RetryPolicy(attempts=3, sleep=sleep))
    async def fetch(url: str) -> str:
        calls["fetch"] += 1
        if calls["fetch"] < 3:
            raise ConnectionResetError("reset")
        return f"body of {url}"

    @durable(retry=RetryPolicy(attempts=2, retry_on=(ValueError,), sleep=sleep))
    def parse(text: str) -> int:
        calls["parse"] += 1
        raise ValueError(text)

    async def main() -> str:
        with pytest.raises(ValueError, match=r"^nope$"):
            await parse("nope")
        return await fetch("http://example.invalid")

    assert anyio.run(main) == "body of http://example.invalid"
    assert calls == {"fetch": 3, "parse": 2}
    assert len(sleep.waits) == 3


# --- how steps run ----------------------------------------------------------------------------


def test_sync_step_runs_in_a_worker_thread(settings: OneshotSettings) -> None:
    """A plain def step is run off the event loop's thread, and awaited like any step."""

    @durable
    def which_thread() -> int:
        return threading.get_ident()

    @workflow
    async def threads() -> list[int]:
        return [threading.get_ident(), await which_thread()]

    loop_thread, step_thread = orchestrate(settings, lambda orch: orch.run_workflow(
        threads, (), {}))
    assert loop_thread == threading.get_ident()  # anyio.run runs the loop in this thread
    assert step_thread != loop_thread


def test_concurrent_steps_are_numbered_in_call_order_and_replay(
        settings: OneshotSettings) -> None:
    """asyncio.gather: seq follows the calls, not the completions; replay gives the same."""
    calls: Counter[str] = Counter()
    finished: list[str] = []

    @durable(name="gather.fetch")
    async def fetch(label: str, delay: float) -> str:
        calls[label] += 1
        await anyio.sleep(delay)
        finished.append(label)
        return label.upper()

    @durable(name="gather.join")
    async def join(parts: list[str]) -> str:
        return "".join(parts)

    @workflow
    async def fan_out() -> str:
        parts = await asyncio.gather(fetch("a", 0.15), fetch("b", 0.0), fetch("c", 0.05))
        return await join(list(parts))

    async def body(orch: AsyncOrchestrator) -> tuple[str, str, list[StepCheckpoint]]:
        first = await orch.start(fan_out)
        result = await first.result()
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        return result, await replay.result(), await orch.store.load_steps(replay.id)

    result, replayed, steps = orchestrate(settings, body)
    assert finished == ["b", "c", "a"]
    assert result == replayed == "ABC"
    assert calls == {"a": 1, "b": 1, "c": 1}
    assert [(s.seq, s.name, s.result) for s in steps] == [
        (0, "gather.fetch", '"A"'), (1, "gather.fetch", '"B"'), (2, "gather.fetch", '"C"'),
        (3, "gather.join", '"ABC"'),
    ]


def test_nested_workflow_runs_inline_as_part_of_its_caller(settings: OneshotSettings) -> None:
    """Its steps take the caller's next numbers; one task in all; the caller's replay covers it."""
    calls: Counter[str] = Counter()

    @durable(name="nested.step")
    async def step(label: str) -> str:
        calls[label] += 1
        return label

    @workflow
    async def inner(prefix: str) -> list[str]:
        return [await step(f"{prefix}1"), await step(f"{prefix}2")]

    @workflow
    async def outer() -> list[str]:
        first = await step("outer-start")
        middle = await inner("inner-")
        return [first, *middle, await step("outer-end")]

    async def body(orch: AsyncOrchestrator) -> Any:
        first = await orch.start(outer)
        assert await first.result() == ["outer-start", "inner-1", "inner-2", "outer-end"]
        tasks = await orch.store.list_tasks()
        replay = await recover_one(orch, await orphan_copy(orch, first.id))
        assert await replay.result() == ["outer-start", "inner-1", "inner-2", "outer-end"]
        return tasks, await orch.store.load_steps(first.id)

    tasks, steps = orchestrate(settings, body)
    assert [task.workflow for task in tasks] == [outer.name]
    assert [(s.seq, s.result) for s in steps] == [
        (0, '"outer-start"'), (1, '"inner-1"'), (2, '"inner-2"'), (3, '"outer-end"')]
    assert set(calls.values()) == {1}


# --- recovery ---------------------------------------------------------------------------------


def test_unregistered_workflow_waits_for_a_process_that_registers_it(
        settings: OneshotSettings) -> None:
    """An orphan whose workflow nobody here registered is never ended: it waits, unowned,
    saying why (once, however often recovery scans), while the other orphans resume; once its
    name is registered, the next recovery resumes it."""

    @durable
    async def greet(who: str) -> str:
        return f"hello {who}"

    @workflow(name="recover.greeter")
    async def greeter(who: str) -> str:
        return await greet(who)

    late_name = f"tests.registered_later_{uuid.uuid4().hex[:8]}"

    async def body(orch: AsyncOrchestrator) -> Any:
        lost = await create_orphan(orch, late_name, '{"who": "later"}')
        found = await create_orphan(orch, "recover.greeter", '{"who": "world"}')
        command = NewTask(id=uuid.uuid4().hex, kind=TaskKind.COMMAND, argv=["true"],
                          owner=GONE_OWNER)
        await orch.store.create_task(command)
        await orch.store.transition(command.id, TaskState.CREATED, TaskState.RUNNING)
        handles = {handle.id: handle for handle in await orch.recover()}
        # The command was committed RUNNING but never launched: recovery runs it now.
        assert set(handles) == {found, command.id}
        outcomes = {task_id: await handle.outcome() for task_id, handle in handles.items()}
        waiting = await orch.store.get_task(lost)
        history = await orch.store.history(lost)
        assert await orch.recover() == []
        assert len(await orch.store.history(lost)) == len(history)  # no row per scan

        @workflow(name=late_name)
        async def registered_later(who: str) -> str:
            return await greet(who)

        resumed = await orch.recover()
        assert [handle.id for handle in resumed] == [lost]
        return (waiting, history, await resumed[0].result(), outcomes[found],
                await orch.store.get_task(command.id), await orch.store.history(lost))

    waiting, history, late_result, found, command, final_history = orchestrate(settings, body)
    assert (waiting.state, waiting.owner, waiting.error) == (TaskState.RECOVERING, None, None)
    reason = history[-1].reason or ""
    assert f"waiting for a process that registers it: workflow '{late_name}' is not " \
           "registered in" in reason
    assert [t.to_state for t in history][-2:] == [TaskState.RUNNING, TaskState.RECOVERING]
    assert late_result == "hello later"
    assert [t.to_state for t in final_history][-3:] == [
        TaskState.RECOVERING, TaskState.RUNNING, TaskState.COMPLETED]
    assert "is registered here" in (final_history[-3].reason or "")
    assert (found.state, found.result) == (TaskState.COMPLETED, '"hello world"')
    assert (command.state, command.exit_code) == (TaskState.COMPLETED, 0)


@persisted_only
@pytest.mark.parametrize("on_startup", [True, False])
def test_opening_an_orchestrator_resumes_interrupted_workflows_unless_told_not_to(
        database: Database, on_startup: bool) -> None:
    """``async with AsyncOrchestrator()`` resumes the orphaned workflows registered here as
    it opens (``orch.resumed``) when ``recovery.on_startup``; with it off they stay put."""

    @durable
    async def shout(word: str) -> str:
        return word.upper()

    @workflow(name="open.shouter")
    async def shouter(word: str) -> str:
        return await shout(word)

    setup = make_settings(database)
    orphan = orchestrate(setup, lambda orch: create_orphan(orch, shouter.name, '{"word": "hi"}'))

    async def body(orch: AsyncOrchestrator) -> Any:
        resumed = [(handle.id, await handle.result()) for handle in orch.resumed]
        return resumed, (await orch.store.get_task(orphan)).state

    resumed, state = orchestrate(
        make_settings(database, **{"recovery.on_startup": on_startup}), body)
    if on_startup:
        assert (resumed, state) == ([(orphan, "HI")], TaskState.COMPLETED)
    else:
        assert (resumed, state) == ([], TaskState.RUNNING)


@persisted_only
def test_recover_leaves_tasks_of_live_orchestrators_alone(settings: OneshotSettings) -> None:
    """A task owned by a running orchestrator (or a live process) is not an orphan."""
    release = anyio.Event()

    @durable
    async def wait_for_release() -> str:
        await release.wait()
        return "released"

    @workflow
    async def waiting() -> str:
        return await wait_for_release()

    async def body(orch: AsyncOrchestrator) -> list[str]:
        running = await orch.start(waiting)
        orphan = await create_orphan(orch, waiting.name, "{}")
        await orch.store.create_task(NewTask(
            id=uuid.uuid4().hex, kind=TaskKind.WORKFLOW, workflow=waiting.name, input="{}",
            owner=f"{socket.gethostname()}:1:init00"))  # pid 1 is alive
        resumed = await orch.recover()
        assert [handle.id for handle in resumed] == [orphan]
        release.set()
        return [await running.result(), await resumed[0].result()]

    assert orchestrate(settings, body) == ["released", "released"]


# --- the CLI ----------------------------------------------------------------------------------


@persisted_only
def test_show_json_lists_the_steps_with_status_and_attempts(database: Database) -> None:
    """`oneshot show ID --json` has "steps": seq, name, status, attempts, error."""
    sleep = FakeSleep()
    calls: Counter[str] = Counter()

    @durable(name="show.flaky", retry=RetryPolicy(attempts=3, retry_on=(ValueError,),
                                                   sleep=sleep))
    async def flaky() -> int:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ValueError("flaky")
        return 3

    @durable(name="show.broken", retry=RetryPolicy(attempts=1))
    async def broken() -> int:
        raise LookupError("gone")

    @workflow(name="show.pipeline")
    async def pipeline() -> str:
        await flaky()
        with contextlib.suppress(LookupError):
            await broken()
        return "shown"

    async def body(orch: AsyncOrchestrator) -> str:
        handle = await orch.start(pipeline)
        assert await handle.result() == "shown"
        return handle.id

    task_id = orchestrate(make_settings(database), body)
    script = Path(sys.executable).parent / "oneshot"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    env.update(database.env())
    shown = subprocess.run([str(script), "show", task_id, "--json"],
                           capture_output=True, timeout=WAIT_LIMIT, env=env)
    assert shown.returncode == 0, shown.stderr.decode()
    data = json.loads(shown.stdout)
    assert (data["id"], data["kind"], data["state"]) == (task_id, "workflow", "COMPLETED")
    assert [(s["seq"], s["name"], s["status"], s["attempts"]) for s in data["steps"]] == [
        (0, "show.flaky", "completed", 3), (1, "show.broken", "failed", 1)]
    assert json.loads(data["steps"][1]["error"])["type"] == "LookupError"
    text = subprocess.run([str(script), "show", task_id],
                          capture_output=True, timeout=WAIT_LIMIT, env=env)
    assert text.returncode == 0, text.stderr.decode()
    assert "show.flaky" in text.stdout.decode() and "LookupError: gone" in text.stdout.decode()
