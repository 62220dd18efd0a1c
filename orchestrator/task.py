"""OneshotTask: runs one command, capturing its output and committing every transition."""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

from durable.exceptions import CommandNotFound
from durable.records import TaskRecord
from durable.states import TaskState
from durable.store import Store
from orchestrator.logcapture import LogCapture, Tee
from orchestrator.process import ChildProcess, spawn
from orchestrator.states import OneshotStateMachine

TERMINATE_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """Log batching and idle detection, from settings."""

    batch_bytes: int = 1 << 20
    flush_interval: float = 0.2
    memory_cap: int = 16 << 20
    idle_threshold: float = 60.0


@dataclass(frozen=True, slots=True)
class TaskResult:
    id: str
    state: TaskState
    exit_code: int | None
    error: str | None = None
    result: str | None = None
    """A workflow's return value as JSON."""

    @property
    def shell_exit_code(self) -> int:
        """What a shell would report: the code, 128+N for signal N, 1 for a failure to start."""
        if self.exit_code is None:
            return 1
        return 128 - self.exit_code if self.exit_code < 0 else self.exit_code


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class OneshotTask:
    """One command task. :meth:`run` drives it from CREATED to a terminal state."""

    def __init__(
        self,
        store: Store,
        record: TaskRecord,
        *,
        options: CaptureOptions,
        env: Mapping[str, str] | None = None,
        tee: Tee | None = None,
        worker: str | None = None,
    ) -> None:
        if record.argv is None:
            raise ValueError(f"task {record.id} has no command")
        self.record = record
        self.store = store
        self.options = options
        self.env = env
        self.machine = OneshotStateMachine(store, record.id, record.state, worker=worker)
        self.capture = LogCapture(
            store, record.id, batch_bytes=options.batch_bytes,
            flush_interval=options.flush_interval, memory_cap=options.memory_cap, tee=tee,
        )
        self.interrupt_reason = "cancelled"

    @property
    def id(self) -> str:
        return self.record.id

    async def run(self) -> TaskResult:
        argv = list(self.record.argv or [])
        await self.machine.transition(TaskState.RUNNING, "starting", started_at=time.time())
        try:
            child = await spawn(argv, cwd=self.record.cwd, env=self.env)
        except CommandNotFound as exc:
            await self.machine.transition(
                TaskState.FAILED, str(exc), error=str(exc), finished_at=time.time()
            )
            return TaskResult(self.id, TaskState.FAILED, None, str(exc))
        try:
            code = await self._supervise(child)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._stop(child)
                await self.capture.flush()
                await self.settle_interrupted(child.returncode)
            raise
        state = TaskState.COMPLETED if code == 0 else TaskState.FAILED
        await self.machine.transition(
            state, describe_exit(code), exit_code=code, finished_at=time.time()
        )
        return TaskResult(self.id, state, code)

    async def settle_interrupted(self, exit_code: int | None = None) -> TaskResult:
        """Record INTERRUPTED (with the interrupt reason) unless the task already ended."""
        if not self.machine.is_terminal:
            await self.machine.transition(
                TaskState.INTERRUPTED, self.interrupt_reason, exit_code=exit_code,
                finished_at=time.time(), error=self.interrupt_reason,
            )
            return TaskResult(self.id, TaskState.INTERRUPTED, exit_code, self.interrupt_reason)
        record = await self.store.get_task(self.id)
        return TaskResult(record.id, record.state, record.exit_code, record.error)

    async def _supervise(self, child: ChildProcess) -> int:
        """Capture output until both streams close, then reap the child; all logs committed."""
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(self.capture.run)
            helpers.start_soon(self._watch_idle)
            async for stream, data in child.output():
                if self.machine.state is TaskState.IDLE:
                    await self.machine.transition_if(
                        frozenset({TaskState.IDLE}), TaskState.RUNNING, "output resumed"
                    )
                await self.capture.write(stream, data)
            code = await child.wait()
            helpers.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.capture.flush()
        return code

    async def _stop(self, child: ChildProcess) -> None:
        """SIGTERM the process group, keep capturing until it exits, SIGKILL after a grace."""
        for signum, grace in ((signal.SIGTERM, TERMINATE_GRACE), (signal.SIGKILL, 2.0)):
            child.signal_group(signum)
            with anyio.move_on_after(grace):
                async for stream, data in child.output():
                    await self.capture.write(stream, data)
                await child.wait()
                return

    async def _watch_idle(self) -> None:
        threshold = self.options.idle_threshold
        while True:
            silent_for = time.monotonic() - self.capture.last_output_at
            if silent_for < threshold:
                await anyio.sleep(threshold - silent_for)
                continue
            await self.machine.transition_if(
                frozenset({TaskState.RUNNING}), TaskState.IDLE, f"no output for {threshold:g}s"
            )
            await anyio.sleep(threshold)
