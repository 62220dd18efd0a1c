"""``@workflow``: an async function whose steps are checkpointed, resumable by its name.

Called inside an orchestrator (``async with AsyncOrchestrator()``), a workflow runs durably: a
task of kind ``workflow`` is created with its serialized input and the call returns the
workflow's result. Called inside another workflow it runs inline, as part of its caller: its
steps take the caller's next sequence numbers, so the caller's replay covers them. Anywhere
else it just runs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from durable.context import current_runtime, current_workflow
from durable.exceptions import WorkflowNotRegistered
from durable.serialization import ArgumentCodec, return_type

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, Workflow[Any, Any]] = {}


class Workflow(Generic[P, R]):
    def __init__(self, fn: Callable[P, Awaitable[R]], *, name: str | None = None) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@workflow needs an async function, got {fn!r}")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.codec = ArgumentCodec(fn)
        self.result_type = return_type(fn)
        functools.update_wrapper(self, fn)
        _registry[self.name] = self

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._call(args, kwargs)

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        runtime = current_runtime.get()
        if current_workflow.get() is None and runtime is not None:
            result: R = await runtime.run_workflow(self, args, kwargs)
            return result
        return await self.fn(*args, **kwargs)


@overload
def workflow(fn: Callable[P, Awaitable[R]], /) -> Workflow[P, R]: ...
@overload
def workflow(*, name: str | None = None) -> Callable[[Callable[P, Awaitable[R]]], Workflow[P, R]]:
    ...


def workflow(fn: Callable[..., Any] | None = None, /, *, name: str | None = None) -> Any:
    """Register an async function as a workflow: ``@workflow`` or ``@workflow(name=...)``.

    The name (default ``module.qualname``) is how an interrupted run is found again after a
    crash; keep it stable, or pass ``name=``.
    """
    if fn is not None:
        return Workflow(fn)

    def decorate(inner: Callable[..., Awaitable[Any]]) -> Workflow[Any, Any]:
        return Workflow(inner, name=name)

    return decorate


def get_workflow(name: str) -> Workflow[Any, Any]:
    try:
        return _registry[name]
    except KeyError:
        raise WorkflowNotRegistered(name) from None


def import_workflow_modules(modules: Iterable[str]) -> None:
    """Import the modules that define workflows, so they register themselves."""
    for module in modules:
        importlib.import_module(module)
