"""OneshotTask: runs one command under a shim, capturing its output, every transition durable."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import anyio

from durable.exceptions import CommandNotFound, LeaseLost
from durable.records import Stream, TaskRecord
from durable.states import TaskState
from durable.store import Store
from orchestrator.logcapture import LogCapture, Tee
from orchestrator.options import RunOptions
from orchestrator.process import ExitInfo, ShimProcess, run_dir_for, spawn
from orchestrator.states import OneshotStateMachine

STOP_SLACK = 5.0
"""Seconds past the grace to wait for a stopped shim before giving up on its exit file."""


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """Log batching, idle detection and where shims spool output, from settings."""

    spool_dir: Path
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


class LetGo(StrEnum):
    """Why a worker stops following a task it does not end: nothing is stopped, and the
    task's state is left for the next owner."""

    LEASE_LOST = "lease lost: another worker took (or may take) the task over"
    HAND_OVER = "handed over by a draining worker"
    FAILED_HERE = "following it failed; it is recovered once its lease passes"


@dataclass(frozen=True, slots=True)
class Reattachment:
    """A surviving shim found by recovery, and where the stored output ends."""

    child: ShimProcess
    next_seq: int
    reason: str


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


class OneshotTask:
    """One command task: :meth:`run` starts it; :meth:`reattach` follows a surviving shim."""

    def __init__(
        self,
        store: Store,
        record: TaskRecord,
        *,
        options: CaptureOptions,
        env: Mapping[str, str] | None = None,
        tee: Tee | None = None,
        worker: str | None = None,
        reattach: Reattachment | None = None,
        holds_lease: Callable[[], bool] = lambda: True,
    ) -> None:
        if record.argv is None:
            raise ValueError(f"task {record.id} has no command")
        self.record = record
        self.store = store
        self.options = options
        self.corrupt: str | None = None
        try:
            self.run_options = RunOptions.from_json(record.options)
        except (ValueError, TypeError, AttributeError) as exc:
            # Failed by run(), not here: raising would stop whoever started it (a worker).
            self.run_options, self.corrupt = RunOptions(), f"corrupt state: {exc}"
        self.env = env
        self.tee = tee
        self.machine = OneshotStateMachine(store, record.id, record.state, worker=worker)
        self.interrupt_reason = "cancelled"
        self.let_go: LetGo | None = None
        self.reattachment = reattach
        self.holds_lease = holds_lease
        self.capture = self._new_capture(0, (0, 0))

    @property
    def id(self) -> str:
        return self.record.id

    def _new_capture(self, next_seq: int, offsets: tuple[int, int]) -> LogCapture:
        o = self.options
        return LogCapture(self.store, self.id, batch_bytes=o.batch_bytes,
                          flush_interval=o.flush_interval, memory_cap=o.memory_cap,
                          tee=self.tee, next_seq=next_seq, offsets=offsets)

    async def run(self) -> TaskResult:
        """Commit the intent (RUNNING), start the shim, record its handle, follow it."""
        if self.reattachment is not None:
            r = self.reattachment
            return await self.reattach(r.child, r.next_seq, r.reason)
        if self.corrupt is not None:
            await self.machine.transition(TaskState.FAILED, self.corrupt, error=self.corrupt,
                                          finished_at=time.time())
            return TaskResult(self.id, TaskState.FAILED, None, self.corrupt)
        await self.machine.transition(TaskState.RUNNING, "starting", started_at=time.time())
        if self.record.attempt > 1:  # a restart: earlier attempts' output stays stored
            last = await self.store.read_logs(self.id, tail=1)
            if last:
                self.capture = self._new_capture(last[0].seq + 1, (0, 0))
        run_dir = run_dir_for(self.options.spool_dir, self.id, self.record.attempt)
        # Shielded: a cancel arriving mid-launch must not leave a started shim unrecorded and
        # unstopped; it is delivered in follow(), which stops the command it then knows about.
        with anyio.CancelScope(shield=True):
            try:
                child = await spawn(list(self.record.argv or []), run_dir=run_dir,
                                    attempt_id=uuid.uuid4().hex, cwd=self.record.cwd,
                                    env=self.env, limits=self.run_options.limits,
                                    check_lease=self._check_lease)
            except CommandNotFound as exc:
                await self.machine.transition(
                    TaskState.FAILED, str(exc), error=str(exc), finished_at=time.time()
                )
                return TaskResult(self.id, TaskState.FAILED, None, str(exc))
            await self.store.save_process(child.handle(self.id, self.record.attempt))
        return await self.follow(child)

    def _check_lease(self) -> None:
        """Raise LeaseLost if this worker was paused past its lease since the RUNNING commit
        (SIGSTOP, a stall): another worker may already run the task, and starting it here too
        would run it twice, or clear the run directory under the other worker's shim."""
        if not self.holds_lease():
            raise LeaseLost(self.id)

    async def reattach(self, child: ShimProcess, next_seq: int, reason: str) -> TaskResult:
        """Resume a RECOVERING task whose shim is alive (or finished while we were down)."""
        self._capture_from(child, next_seq)
        if not child.finished():
            await self.machine.transition(TaskState.RUNNING, reason)
        return await self.follow(child)

    async def salvage(self, child: ShimProcess, next_seq: int) -> None:
        """Store whatever a lost process left in its spool beyond the stored offsets."""
        self._capture_from(child, next_seq)
        async for stream, data in child.output():
            await self.capture.write(stream, data, child.offsets[stream])
        await self.capture.flush()

    def _capture_from(self, child: ShimProcess, next_seq: int) -> None:
        offsets = (child.offsets[Stream.STDOUT], child.offsets[Stream.STDERR])
        self.capture = self._new_capture(next_seq, offsets)

    async def follow(self, child: ShimProcess) -> TaskResult:
        """Capture output until the shim finishes, then commit the ending it reports."""
        try:
            await self._supervise(child)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if self.let_go is None:
                    await self._stop(child)
                    info = child.exit_info()
                    await self.settle_interrupted(info.code if info else None)
                elif self.let_go is LetGo.HAND_OVER:
                    await self.capture.flush()  # the next owner reads on from here
            raise
        return await self._finish(child)

    async def _finish(self, child: ShimProcess) -> TaskResult:
        info = child.exit_info() or ExitInfo(None, error="the shim died without an exit status")
        now = time.time()
        notes = child.take_notes()  # e.g. a spool file truncated behind our back
        if info.reason == "stop requested":
            self.interrupt_reason = "cancelled (oneshot cancel)" + notes
            result = await self.settle_interrupted(info.code)
        elif info.code is None:
            await self.machine.transition(TaskState.INTERRUPTED, info.error, error=info.error,
                                          finished_at=now)
            result = TaskResult(self.id, TaskState.INTERRUPTED, None, info.error)
        else:
            state = TaskState.COMPLETED if info.code == 0 else TaskState.FAILED
            reason = describe_exit(info.code) + (f" ({info.reason})" if info.reason else "")
            reason += notes
            await self.machine.transition(state, reason, exit_code=info.code, finished_at=now,
                                          error=info.reason)
            result = TaskResult(self.id, state, info.code, info.reason)
        await child.remove_spool()
        return result

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

    async def _supervise(self, child: ShimProcess) -> None:
        """Capture output until the shim has finished; all of it committed on return."""
        async with anyio.create_task_group() as helpers:
            helpers.start_soon(self.capture.run)
            helpers.start_soon(self._watch_idle)
            async for stream, data in child.output():
                if self.machine.state is TaskState.IDLE:
                    await self.machine.transition_if(
                        frozenset({TaskState.IDLE}), TaskState.RUNNING, "output resumed"
                    )
                await self.capture.write(stream, data, child.offsets[stream])
            helpers.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.capture.flush()

    async def _stop(self, child: ShimProcess) -> None:
        """Have the shim stop the command; keep capturing until it has finished."""
        child.stop()
        with anyio.move_on_after(self.run_options.grace + STOP_SLACK):
            async for stream, data in child.output():
                await self.capture.write(stream, data, child.offsets[stream])
        await self.capture.flush()

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
