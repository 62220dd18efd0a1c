"""``@durable`` on methods: bound as Python binds them, named ``module.Class.method``, and
replayed from checkpoints like any step (``self`` is never stored).

Each test runs a workflow inside an orchestrator on every store kind, then resumes a crashed
twin of the finished run (same input and checkpoints, an owner that is gone) and checks that
no step body ran again and that the replay returned what the first run did.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from collections import Counter
from typing import Any

import anyio

from config import load_settings
from durable import durable, workflow
from durable.records import NewTask, TaskKind
from durable.states import TaskState
from orchestrator import AsyncOrchestrator
from tests.support import Database, orchestrate

GONE_OWNER = f"{socket.gethostname()}:{os.getpid()}:gone01"
CALLS: Counter[str] = Counter()


class Account:
    rate = 3

    def __init__(self, owner: str) -> None:
        self.owner = owner

    @durable
    async def greet(self, greeting: str) -> str:
        CALLS["greet"] += 1
        return f"{greeting}, {self.owner}"

    @durable
    def balance(self, cents: int) -> int:  # sync: runs in a worker thread, self bound too
        CALLS["balance"] += 1
        return cents + len(self.owner)

    @durable
    @classmethod
    async def scaled(cls, value: int) -> int:
        CALLS["scaled"] += 1
        return value * cls.rate

    @classmethod
    @durable
    def scaled_below(cls, value: int) -> int:
        CALLS["scaled_below"] += 1
        return value * cls.rate + 1

    @durable
    @staticmethod
    async def negated(value: int) -> int:
        CALLS["negated"] += 1
        return -value

    @staticmethod
    @durable
    def doubled(value: int) -> int:
        CALLS["doubled"] += 1
        return value * 2


class Savings(Account):
    rate = 5


@workflow(name="methods.uses_every_kind")
async def uses_every_kind(owner: str) -> list[Any]:
    account = Savings(owner)
    return [await account.greet("hello"), await account.balance(100),
            await account.scaled(2), await Savings.scaled_below(2),
            await account.negated(7), await Account.doubled(4)]


EXPECTED = ["hello, ada", 103, 10, 11, -7, 8]


def test_methods_bind_like_python_and_replay_from_checkpoints(database: Database) -> None:
    """self / cls (the subclass's) / nothing are bound as Python binds them; each method is a
    step named module.Class.method; a resumed twin replays every one without calling it."""
    settings = load_settings(overrides=database.overrides())

    async def body(orch: AsyncOrchestrator) -> Any:
        CALLS.clear()
        first = await uses_every_kind("ada")
        calls_after_first = dict(CALLS)
        [task] = [t for t in await orch.store.list_tasks() if t.state is TaskState.COMPLETED]
        steps = await orch.store.load_steps(task.id)
        twin = NewTask(id=uuid.uuid4().hex, kind=TaskKind.WORKFLOW, workflow=task.workflow,
                       name=task.name, input=task.input, owner=GONE_OWNER)
        await orch.store.create_task(twin, worker=GONE_OWNER)
        await orch.store.transition(twin.id, TaskState.CREATED, TaskState.RUNNING,
                                    worker=GONE_OWNER)
        for step in steps:
            await orch.store.save_step(dataclasses.replace(step, task_id=twin.id))
        [handle] = await orch.recover()
        replayed = await handle.result()
        return first, calls_after_first, dict(CALLS), [step.name for step in steps], replayed

    first, calls_after_first, calls_after_replay, names, replayed = orchestrate(settings, body)
    assert first == EXPECTED
    assert replayed == first
    assert calls_after_first == dict.fromkeys(
        ["greet", "balance", "scaled", "scaled_below", "negated", "doubled"], 1)
    assert calls_after_replay == calls_after_first  # replay called no method
    module = __name__
    assert names == [f"{module}.Account.greet", f"{module}.Account.balance",
                     f"{module}.Account.scaled", f"{module}.Account.scaled_below",
                     f"{module}.Account.negated", f"{module}.Account.doubled"]


def test_a_method_step_outside_a_workflow_just_runs() -> None:
    """Outside a workflow a method step is an ordinary (awaited) method call."""

    async def calls() -> list[Any]:
        account = Account("bob")
        return [await account.greet("hi"), await Account.scaled(1), await account.doubled(3),
                await Account.greet(account, "hey")]

    assert anyio.run(calls) == ["hi, bob", 3, 6, "hey, bob"]
