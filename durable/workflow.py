"""``@workflow``: an async function whose steps are checkpointed, resumable by its name.

Called inside an orchestrator (``async with AsyncOrchestrator()``), a workflow runs durably: a
task of kind ``workflow`` is created with its serialized input and the call returns the
workflow's result. Called inside another workflow it runs inline, as part of its caller: its
steps take the caller's next sequence numbers, so the caller's replay covers them. Anywhere
else it just runs.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from durable.context import current_runtime, current_workflow
from durable.exceptions import WorkflowNotRegistered
from durable.naming import (
    MAIN,
    import_module,
    module_name_for_path,
    package_root,
    qualified_name,
)
from durable.serialization import ArgumentCodec

P = ParamSpec("P")
R = TypeVar("R")

_registry: dict[str, Workflow[Any, Any]] = {}


class Workflow(Generic[P, R]):
    def __init__(self, fn: Callable[P, Awaitable[R]], *, name: str | None = None,
                 max_recovery_attempts: int | None = None) -> None:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"@workflow cannot make a workflow of the generator function "
                            f"{qualified_name(fn)}: its result is stored, so it must be an "
                            "async function that returns a value")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@workflow needs an async function, got {fn!r}")
        if max_recovery_attempts is not None and max_recovery_attempts < 1:
            raise ValueError(f"max_recovery_attempts must be at least 1, got "
                             f"{max_recovery_attempts}")
        self.fn = fn
        self.name = name or qualified_name(fn)
        self.max_recovery_attempts = max_recovery_attempts
        """How many times it may run in all (the first run and each resumption after a
        crash); None: ``recovery.max_attempts``."""
        self.codec = ArgumentCodec(fn)
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
def workflow(*, name: str | None = None, max_recovery_attempts: int | None = None
             ) -> Callable[[Callable[P, Awaitable[R]]], Workflow[P, R]]: ...


def workflow(fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
             max_recovery_attempts: int | None = None) -> Any:
    """Register an async function as a workflow: ``@workflow`` or ``@workflow(name=...,
    max_recovery_attempts=N)``.

    The name (default ``module.qualname``, with a script's module named as it is imported:
    ``flow.pipeline`` whether ``flow.py`` runs as a script, with ``python -m`` or imported) is
    how an interrupted run is found again after a crash; keep it stable, or pass ``name=``.
    ``max_recovery_attempts`` bounds how many times it runs in all, first run included, when
    each run dies with its process (default: ``recovery.max_attempts``).
    """
    if fn is not None:
        return Workflow(fn)

    def decorate(inner: Callable[..., Awaitable[Any]]) -> Workflow[Any, Any]:
        return Workflow(inner, name=name, max_recovery_attempts=max_recovery_attempts)

    return decorate


def get_workflow(name: str) -> Workflow[Any, Any]:
    """The workflow registered as ``name``.

    A name stored before script modules were named canonically (``__main__.pipeline``) is
    found by its qualname when exactly one registered workflow has it.
    """
    found = _registry.get(name)
    if found is not None:
        return found
    if name.startswith(MAIN + "."):
        qualname = name.removeprefix(MAIN + ".")
        matches = [wf for wf in _registry.values() if wf.fn.__qualname__ == qualname]
        if len(matches) == 1:
            return matches[0]
    raise WorkflowNotRegistered(name)


def is_registered(name: str) -> bool:
    try:
        get_workflow(name)
    except WorkflowNotRegistered:
        return False
    return True


def import_workflow_modules(modules: Iterable[str]) -> None:
    """Import the modules that define workflows, so they register themselves.

    Each is a module name (``myapp.flows``) or the path of a Python file (``flows/flow.py``):
    a file is imported under its canonical module name (see :mod:`durable.naming`), with its
    package root put on ``sys.path``, so its workflows get the names they have when the file
    runs as a script.
    """
    for module in modules:
        if module.endswith(".py") or os.sep in module:
            path = Path(module)
            if not path.is_file():
                raise ImportError(f"no such file: {module}")
            root = str(package_root(path))
            if root not in sys.path:
                sys.path.insert(0, root)
            module = module_name_for_path(path)
        import_module(module)
