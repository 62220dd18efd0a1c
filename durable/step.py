"""``@durable``: a step whose outcome is checkpointed inside a workflow.

Inside a workflow each call takes the next sequence number at call time (so steps started
together with ``asyncio.gather`` are numbered in the order they were called). A step recorded
as completed returns its stored result without running; one recorded as failed raises its
stored error again; a different step name at that number raises
:class:`NonDeterminismError`. Otherwise the step runs with its retry policy and its outcome is
committed before the workflow goes on. Outside a workflow the function just runs, with retries.
Sync functions run in a worker thread; either way a decorated step is awaited.
"""

from __future__ import annotations

import functools
import inspect
import time
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, overload

import anyio

from durable.context import (
    StepCall,
    WorkflowContext,
    current_step,
    current_workflow,
    default_retry_policy,
)
from durable.error_codec import dump_error, encode_error, rebuild_error
from durable.exceptions import NonDeterminismError
from durable.naming import qualified_name
from durable.records import StepCheckpoint, StepStatus
from durable.retry import RetryPolicy
from durable.serialization import dump, load

P = ParamSpec("P")
R = TypeVar("R")


class DurableStep(Generic[P, R]):
    """A decorated step. On a class it binds as Python binds the function it wraps: an
    instance method gets ``self``, a ``classmethod`` (``@durable`` above or below it) ``cls``,
    a ``staticmethod`` nothing; the step's name is ``module.Class.method`` either way."""

    def __init__(self, fn: Callable[P, Any], *, name: str | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.binds_class = isinstance(fn, classmethod)
        self.binds_instance = not isinstance(fn, classmethod | staticmethod)
        if isinstance(fn, classmethod | staticmethod):
            fn = fn.__func__
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"@durable cannot make a step of the generator function "
                            f"{qualified_name(fn)}: a step's result is stored, so it must "
                            "return a value (collect the items in a list)")
        self.fn = fn
        self.name = name or qualified_name(fn)
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        """Bind ``self`` (or ``cls``) as a method call would; on the class, the step itself."""
        if self.binds_class:
            return types.MethodType(self, owner if owner is not None else type(instance))
        if self.binds_instance and instance is not None:
            return types.MethodType(self, instance)
        return self

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        ctx = current_workflow.get()
        if ctx is None:
            return self._run_plain(args, kwargs)
        return self._run_durably(ctx, ctx.next_seq(), args, kwargs)

    async def _run_plain(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        _, value, error, _ = await self._attempts(self.retry or default_retry_policy.get(),
                                                  args, kwargs)
        if error is not None:
            raise error
        result: R = value
        return result

    async def _run_durably(self, ctx: WorkflowContext, seq: int, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> R:
        recorded = ctx.recorded.get(seq)
        if recorded is not None:
            if recorded.name != self.name:
                raise NonDeterminismError(ctx.task_id, seq, recorded.name, self.name)
            if recorded.status == StepStatus.COMPLETED:
                value: R = load(recorded.result or "null",
                                f"the stored result of step {seq} {self.name!r}")
                return value
            raise rebuild_error(recorded.error or "{}", self.name, seq)
        started = time.time()
        call = current_step.set(StepCall(ctx.task_id, seq))
        try:
            attempts, value, error, last_error = await self._attempts(
                self.retry or ctx.default_retry, args, kwargs
            )
        finally:
            current_step.reset(call)
        rebuildable = True
        if error is None:
            result = dump(value, f"the result of step {self.name!r}")
            status, stored_error = StepStatus.COMPLETED, (
                dump_error(last_error) if last_error is not None else None)
        else:
            result, status = None, StepStatus.FAILED
            stored_error, rebuildable = encode_error(error)
        checkpoint = StepCheckpoint(
            task_id=ctx.task_id, seq=seq, name=self.name, status=status, started_at=started,
            finished_at=time.time(), attempts=attempts, result=result, error=stored_error,
        )
        with anyio.CancelScope(shield=True):
            await ctx.store.save_step(checkpoint)
        if error is not None:
            if rebuildable:
                raise error
            # Replay cannot rebuild it: the first run raises what every replay will.
            raise rebuild_error(stored_error or "{}", self.name, seq) from error
        return value

    async def _attempts(self, policy: RetryPolicy, args: tuple[Any, ...],
                        kwargs: dict[str, Any]
                        ) -> tuple[int, Any, Exception | None, Exception | None]:
        """Run with retries: (attempts, value, final error or None, last retried error).

        The first attempt runs directly (most steps succeed, and building a tenacity retrier
        costs more than a trivial step); tenacity takes over only once it failed, starting from
        that failure, so its stop and backoff count the first attempt.
        """
        try:
            return 1, await self._invoke(args, kwargs), None, None
        except Exception as exc:
            first_error = exc
        attempts, last_error = 0, first_error
        try:
            async for attempt in policy.retrying():
                with attempt:
                    attempts += 1
                    if attempts == 1:
                        raise first_error
                    try:
                        value = await self._invoke(args, kwargs)
                    except Exception as exc:
                        last_error = exc
                        raise
                    return attempts, value, None, last_error
        except Exception as exc:
            return attempts, None, exc, exc
        raise AssertionError("tenacity stopped without an outcome")

    async def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.is_async:
            return await self.fn(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(self.fn, *args, **kwargs))


@overload
def durable(fn: Callable[P, Awaitable[R]], /) -> DurableStep[P, R]: ...
@overload
def durable(fn: Callable[P, R], /) -> DurableStep[P, R]: ...
@overload
def durable(
    *, name: str | None = None, retry: RetryPolicy | None = None
) -> Callable[[Callable[P, Any]], DurableStep[P, Any]]: ...


def durable(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
            retry: RetryPolicy | None = None) -> Any:
    """Make ``fn`` a durable step: ``@durable`` or ``@durable(name=..., retry=RetryPolicy(...))``.

    The step's name (default ``module.qualname``) identifies it in checkpoints; keep it stable
    across code changes, or pass ``name=``.
    """
    if fn is not None:
        return DurableStep(fn)

    def decorate(inner: Callable[..., Any]) -> DurableStep[Any, Any]:
        return DurableStep(inner, name=name, retry=retry)

    return decorate
