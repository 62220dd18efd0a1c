"""Resuming interrupted work when an orchestrator starts, or on `oneshot recover`.

Each orphan (see :mod:`durable.recovery`) is first taken over with a guarded transition to
RECOVERING that also makes this orchestrator its owner, so two recoverers never resume the same
task: the second one's guarded update finds another state and skips it. Then, from evidence:

- a **workflow** resumes from its checkpoints by its registered name with its stored input;
- a **command** whose shim is alive is reattached: its spool is tailed from the stored offsets;
- a command that **finished while we were down** has the rest of its spool stored and ends
  COMPLETED or FAILED with the real code from the shim's exit file;
- a command that **never started** (killed between the intent commit and the launch) goes back
  to CREATED and runs;
- a command whose process is **lost** — vanished, its shim dead, the machine rebooted (boot id
  changed) or it ran on another host — has what its spool holds stored, then gets the fallback:
  ``interrupt`` (INTERRUPTED with the cause), ``restart`` (attempt + 1, up to
  ``recovery.max_attempts``) or ``fail``, from the task's ``--on-lost`` or
  ``ONESHOT_RECOVERY__MISSING_PROCESS``. A lost command still running without its shim is
  killed first, through a verified pidfd: nothing re-runs before the old instance is dead.
- a task whose stored state cannot be read (bad JSON, unknown values) ends FAILED with
  ``corrupt state: ...``; every other task still recovers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from durable.exceptions import LeaseLost, StateConflict, StoreError
from durable.records import ProcessHandle, TaskKind, TaskRecord
from durable.recovery import (
    WAITING_REASON,
    _is_zombie,
    find_orphans,
    waiting_for_registration,
)
from durable.states import TaskState
from durable.workflow import get_workflow, is_registered
from orchestrator.options import RunOptions
from orchestrator.process import LAUNCH_TIMEOUT, ShimProcess, current_boot_id, run_dir_for
from orchestrator.shim import proc_start_time
from orchestrator.task import OneshotTask, Reattachment

if TYPE_CHECKING:
    from orchestrator.orchestrator import AsyncOrchestrator, TaskHandle


logger = logging.getLogger(__name__)

RECOVERY_CONCURRENCY = 64
"""Orphans decided at once: enough to share commits, few enough to bound open files."""


@dataclass(frozen=True, slots=True)
class Facts:
    """Process handles and next log sequence numbers of the orphaned commands, by task id."""

    handles: dict[str, ProcessHandle]
    next_seqs: dict[str, int]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What recovery found for one command: ``verdict`` and the shim, if there is one."""

    verdict: str  # "alive", "finished", "never-started", "lost"
    cause: str
    child: ShimProcess | None = None


async def recover_orphans(orch: AsyncOrchestrator, only: str | None = None, *,
                          workflows_only: bool = False) -> list[TaskHandle]:
    """Take over every orphaned task (or just task ``only``, or only workflows); returns the
    handles of the tasks resumed here. Orphans are handled concurrently, so their commits are
    grouped. A workflow whose name is not registered in this process is never ended here: it
    is left waiting (see :func:`_leave_waiting`) for a process that registers it."""
    orphans = await find_orphans(orch.store)
    for ref, problem in orphans.corrupt:
        if only is None or ref.id == only:
            with contextlib.suppress(StateConflict):
                await orch.store.fail_corrupt(ref.id, ref.state, f"corrupt state: {problem}")
                _stop_unwatched(await orch.store.get_process(ref.id))
    limiter = anyio.CapacityLimiter(RECOVERY_CONCURRENCY)
    taken: list[TaskRecord] = []

    async def take(record: TaskRecord) -> None:
        async with limiter:
            record_taken = await _take_over(orch, record)
            if record_taken is not None:
                taken.append(record_taken)

    async with anyio.create_task_group() as group:
        for record in orphans.tasks:
            if only is not None and record.id != only:
                continue
            if record.kind == TaskKind.WORKFLOW and not is_registered(record.workflow or ""):
                group.start_soon(_leave_waiting, orch, record)
            elif record.kind == TaskKind.WORKFLOW or not workflows_only:
                group.start_soon(take, record)
    # Read after the takeovers, in two queries for all: the fence moved with each takeover,
    # so a previous owner that is only paused can no longer add output behind these facts.
    facts = Facts(*await orch.store.recovery_facts(
        [r.id for r in taken if r.kind == TaskKind.COMMAND]))
    handles: list[TaskHandle] = []

    async def recover(record: TaskRecord) -> None:
        async with limiter:
            try:
                handle = await _recover_one(orch, record, facts)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                await _end(orch, record, TaskState.FAILED, f"corrupt state: {exc}")
                _stop_unwatched(facts.handles.get(record.id))
                return
            if handle is not None:
                handles.append(handle)

    async with anyio.create_task_group() as group:
        for record in taken:
            group.start_soon(recover, record)
    return handles


async def _leave_waiting(orch: AsyncOrchestrator, record: TaskRecord) -> None:
    """Leave an orphaned workflow this process cannot run RECOVERING without an owner (a new
    fencing token stops a paused owner), saying why; any process that registers its name takes
    it from there. Already waiting: nothing is written again."""
    if waiting_for_registration(record):
        return
    try:
        await orch.store.transition(
            record.id, record.state, TaskState.RECOVERING, worker=orch.worker_id,
            reason=f"{WAITING_REASON}: workflow {record.workflow!r} is not registered in "
                   f"{orch.worker_id}",
            fields={"owner": None, "lease_expires_at": None}, takeover_from=record.fence)
    except (StateConflict, LeaseLost):
        return  # taken or moved since it was read
    except StoreError as exc:
        logger.warning("task %s: could not record that it waits: %s", record.id, exc)
        return
    logger.warning("workflow task %s (%s) waits for a process that registers it "
                   "(--import its module)", record.id, record.workflow)


async def _take_over(orch: AsyncOrchestrator, record: TaskRecord) -> TaskRecord | None:
    """Become the owner (guarded); a workflow's resumption counts as a new attempt."""
    attempt = record.attempt + (1 if record.kind == TaskKind.WORKFLOW else 0)
    lease = orch.lease_expiry()
    try:
        await orch.store.transition(
            record.id, record.state, TaskState.RECOVERING,
            reason=_takeover_reason(record) + f"; recovered by {orch.worker_id}",
            worker=orch.worker_id,
            fields={"owner": orch.worker_id, "attempt": attempt, "lease_expires_at": lease},
            takeover_from=record.fence,
        )
    except (StateConflict, LeaseLost):
        return None  # someone else took it (or moved it) since it was read
    except StoreError as exc:  # e.g. a lock timeout behind a paused owner: next scan retries
        logger.warning("task %s: takeover failed, will retry: %s", record.id, exc)
        return None
    return replace(record, state=TaskState.RECOVERING, owner=orch.worker_id, attempt=attempt,
                   lease_expires_at=lease, fence=record.fence + 1)


def _takeover_reason(record: TaskRecord) -> str:
    if waiting_for_registration(record):
        return f"workflow {record.workflow!r} is registered here"
    if record.owner is not None:
        return f"owner {record.owner} is gone"
    return "released by its owner"


async def _recover_one(orch: AsyncOrchestrator, record: TaskRecord, facts: Facts
                       ) -> TaskHandle | None:
    max_attempts = orch.settings.recovery.max_attempts
    if record.kind == TaskKind.WORKFLOW:
        definition = get_workflow(record.workflow or "")
        limit = definition.max_recovery_attempts
        if limit is None:
            limit, source = max_attempts, "recovery.max_attempts"
        else:
            source = "its max_recovery_attempts"
        if record.attempt > limit:
            await _end(orch, record, TaskState.FAILED, "recovery attempts exhausted: "
                       f"{record.attempt - 1} runs ended with their process, {source} is "
                       f"{limit}")
            return None
        return orch.start_task(record)
    if record.argv is None or not all(isinstance(arg, str) for arg in record.argv):
        raise ValueError("the stored command is not a list of strings")
    options = RunOptions.from_json(record.options)
    evidence = await _inspect(orch, record, facts.handles.get(record.id))
    next_seq = facts.next_seqs.get(record.id, 0)
    if evidence.verdict in ("alive", "finished"):
        assert evidence.child is not None
        if record.id not in facts.handles:
            # Its owner died between the launch and recording the process: record it now,
            # so the offsets this reattachment stores survive it (a later takeover must read
            # on from them, not from the start of the spool again).
            await orch.store.save_process(evidence.child.handle(record.id, record.attempt))
        reason = (f"reattached to pid {evidence.child.pid}{evidence.child.take_notes()}"
                  if evidence.verdict == "alive" else evidence.cause)
        return orch.start_task(record, reattach=Reattachment(
            evidence.child, next_seq, reason))
    if evidence.verdict == "never-started":
        return await _run_again(orch, record, evidence.cause, record.attempt)
    if evidence.child is not None:
        await OneshotTask(orch.store, record, options=orch.capture_options).salvage(
            evidence.child, next_seq)
    mode = options.on_lost or orch.settings.recovery.missing_process
    if mode == "restart":
        if record.attempt >= max_attempts:
            await _end(orch, record, TaskState.FAILED, f"{evidence.cause}; recovery attempts "
                       f"exhausted ({record.attempt} of {max_attempts})")
            return None
        return await _run_again(orch, record, f"restart: {evidence.cause}", record.attempt + 1)
    state = TaskState.FAILED if mode == "fail" else TaskState.INTERRUPTED
    notes = evidence.child.take_notes() if evidence.child is not None else ""
    await _end(orch, record, state, evidence.cause + notes)
    return None


async def _inspect(orch: AsyncOrchestrator, record: TaskRecord,
                   handle: ProcessHandle | None) -> Evidence:
    if handle is not None and handle.host != socket.gethostname():
        return Evidence("lost", f"its process ran on host {handle.host}, not this one")
    run_dir = (Path(handle.run_dir) if handle is not None
               else run_dir_for(orch.capture_options.spool_dir, record.id, record.attempt))
    offsets = (handle.stdout_offset, handle.stderr_offset) if handle is not None else (0, 0)
    child = ShimProcess.attach(run_dir, offsets)
    if child is None and await _launch_in_progress(run_dir):
        child = ShimProcess.attach(run_dir, offsets)
    if child is None:
        return _never_started(run_dir)
    if child.started.get("boot_id") != current_boot_id():
        return Evidence("lost", "the machine rebooted (boot id changed) while it ran", child)
    info = child.exit_info()
    if info is not None:
        return Evidence("finished", "exited while no orchestrator was watching", child)
    if child.lock_held():
        return Evidence("alive", "its shim is alive", child)
    if _kill_verified(child.pid, child.started.get("pid_start")):
        return Evidence("lost", "its shim died; the orphaned command was killed", child)
    return Evidence("lost", "its process vanished without an exit status", child)


async def _launch_in_progress(run_dir: Path) -> bool:
    """Wait while a shim may still be starting (its spec is fresh and nothing says it failed):
    a launch the dead orchestrator began must not be run a second time."""
    spec = run_dir / "spec.json"
    try:
        deadline = spec.stat().st_mtime + LAUNCH_TIMEOUT
    except OSError:
        return False
    while time.time() < deadline:
        if (run_dir / "started.json").exists() or (run_dir / "exit.json").exists():
            return True
        await anyio.sleep(0.05)
    return (run_dir / "started.json").exists()


def _never_started(run_dir: Path) -> Evidence:
    exit_file = run_dir / "exit.json"
    if exit_file.exists():
        error = json.loads(exit_file.read_text()).get("error") or "it could not start"
        return Evidence("lost", error)
    return Evidence("never-started", "its launch was interrupted before the command started")


def _stop_unwatched(handle: ProcessHandle | None) -> None:
    """A task ended FAILED for a corrupt row, so nobody will follow its command: have its shim
    (verified) stop it rather than leave it running unwatched. The run directory stays, with
    whatever output was not stored yet."""
    if handle is None or handle.host != socket.gethostname():
        return
    child = ShimProcess.attach(Path(handle.run_dir), (0, 0))
    if child is not None:
        child.stop()


def _kill_verified(pid: int, start_time: int | None) -> bool:
    """SIGKILL the process group of ``pid`` if ``pid`` is still that very process."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if start_time is None or proc_start_time(pid) != start_time:
            return False  # the pid now belongs to someone else: never signal it
        if _is_zombie(pid):
            return False  # already dead, only not reaped yet: nothing was killed
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the command leads its own group
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


async def _run_again(orch: AsyncOrchestrator, record: TaskRecord, reason: str,
                     attempt: int) -> TaskHandle:
    await orch.store.transition(record.id, TaskState.RECOVERING, TaskState.CREATED,
                                reason=reason, worker=orch.worker_id,
                                fields={"attempt": attempt})
    return orch.start_task(replace(record, state=TaskState.CREATED, attempt=attempt))


async def _end(orch: AsyncOrchestrator, record: TaskRecord, state: TaskState,
               reason: str) -> None:
    await orch.store.transition(record.id, TaskState.RECOVERING, state, reason=reason,
                                worker=orch.worker_id,
                                fields={"finished_at": time.time(), "error": reason})
