"""JSON for step results, workflow inputs and errors, through pydantic type adapters.

A value is dumped with the adapter of its declared type (the function's annotation, ``Any`` when
there is none) and loaded back into that type: pydantic models, dataclasses, builtins. A value
pydantic cannot dump raises :class:`SerializationError` before anything is committed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import PydanticSerializationError

from durable.exceptions import SerializationError, StepFailed


@lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        return _adapter(annotation)
    except TypeError:  # unhashable annotation
        return TypeAdapter(annotation)


def dump(value: Any, annotation: Any, what: str) -> str:
    try:
        return adapter(annotation).dump_json(value).decode()
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise SerializationError(what, str(exc).splitlines()[0]) from exc


def load(text: str, annotation: Any) -> Any:
    return adapter(annotation).validate_json(text)


def type_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The function's resolved annotations; unresolvable ones count as ``Any``."""
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a forward reference we cannot resolve
        return {}


def return_type(fn: Callable[..., Any]) -> Any:
    hint = type_hints(fn).get("return", Any)
    origin = typing.get_origin(hint)
    if origin is not None and getattr(origin, "__name__", "") in {"Awaitable", "Coroutine"}:
        args = typing.get_args(hint)
        return args[-1] if args else Any
    return hint


class ArgumentCodec:
    """Dumps a call's arguments to JSON (by parameter name) and rebuilds ``(args, kwargs)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.signature = inspect.signature(fn)
        hints = type_hints(fn)
        self._types: dict[str, Any] = {}
        for name, param in self.signature.parameters.items():
            hint = hints.get(name, Any)
            if param.kind is param.VAR_POSITIONAL:
                hint = tuple[hint, ...]  # type: ignore[valid-type]
            elif param.kind is param.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            self._types[name] = hint

    def dump(self, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> str:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SerializationError(what, str(exc)) from exc
        parts = {
            name: json.loads(dump(value, self._types[name], f"{what} argument {name!r}"))
            for name, value in bound.arguments.items()
        }
        return json.dumps(parts)

    def load(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        raw = json.loads(text)
        arguments = {
            name: adapter(self._types[name]).validate_python(value)
            for name, value in raw.items()
        }
        bound = inspect.BoundArguments(self.signature, arguments)
        return bound.args, bound.kwargs


def dump_error(exc: BaseException) -> str:
    kind = type(exc)
    return json.dumps(
        {"type": kind.__qualname__, "module": kind.__module__, "message": str(exc)}
    )


def rebuild_error(text: str, name: str, seq: int) -> Exception:
    """The stored exception as its original type when that type takes one message argument,
    else :class:`StepFailed` carrying the type name and message."""
    data = json.loads(text)
    try:
        kind = getattr(importlib.import_module(data["module"]), data["type"])
        if isinstance(kind, type) and issubclass(kind, Exception):
            error = kind(data["message"])
            if str(error) == data["message"]:
                return error
    except Exception:  # fall back to StepFailed below
        pass
    return StepFailed(name, seq, data["type"], data["message"])


def error_summary(text: str) -> str:
    data = json.loads(text)
    return f"{data['type']}: {data['message']}"
