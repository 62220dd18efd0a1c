"""Step and workflow exceptions as JSON, rebuilt on replay as themselves or as StepFailed.

An exception is stored with its type, ``args``, attributes (``__dict__``, so ``__notes__``
too, and the state built-in types keep elsewhere, such as ``OSError.errno``) and its
``__cause__`` chain, each value in the self-describing JSON of :mod:`durable.serialization`,
beside ``type``, ``module``, ``message`` and ``traceback`` for display. Replay rebuilds it as
pickle rebuilds exceptions, without calling ``__init__``. Whether it can be rebuilt is decided
on the first run, by rebuilding it there: when it cannot (a local class, an argument that cannot
be stored, ...), the first run already raises the :class:`StepFailed` every replay will raise.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from durable.exceptions import StepFailed
from durable.naming import canonical_module, resolve
from durable.serialization import JSON, Refused, class_name, decode, encode, label

_NATIVE_STATE: tuple[tuple[type[BaseException], tuple[str, ...]], ...] = (
    (OSError, ("errno", "strerror", "filename", "filename2")),
    (ImportError, ("msg", "name", "path")),
    (AttributeError, ("name",)),  # not .obj: the object the lookup failed on
    (NameError, ("name",)),
    (StopIteration, ("value",)),
    (SystemExit, ("code",)),
    (SyntaxError, ("msg", "filename", "lineno", "offset", "text", "end_lineno", "end_offset",
                   "print_file_and_line")),
    (UnicodeError, ("encoding", "object", "start", "end", "reason")),
)
"""State the built-in exception types keep outside ``__dict__`` and ``args``."""


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__
        return f"<unprintable {type(exc).__qualname__}>"


def _slots(cls: type) -> tuple[str, ...]:
    slots = cls.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(slots)


def _error_state(exc: BaseException, seen: set[int]) -> dict[str, Any]:
    """What rebuilds ``exc``: type, args, attributes and cause, tagged; else Refused."""
    if id(exc) in seen:
        raise Refused("its __cause__ chain loops")
    seen.add(id(exc))
    kind = type(exc)
    class_name(kind)
    if any(slot not in ("__dict__", "__weakref__") for cls in kind.__mro__
           for slot in _slots(cls)):
        raise Refused(f"{label(kind)} keeps state in __slots__")
    attrs = {}
    for base, names in _NATIVE_STATE:
        if isinstance(exc, base):
            for name in names:
                value = getattr(exc, name, None)
                if value is not None:  # None is unset (OSError prints a filename2 set to None)
                    attrs[name] = encode(value)
    attrs.update((name, encode(value)) for name, value in vars(exc).items())
    state: dict[str, Any] = {"type": kind.__qualname__, "module": canonical_module(kind.__module__),
                             "message": _message(exc), "attrs": attrs,
                             "args": [encode(arg) for arg in exc.args]}
    if exc.__cause__ is not None:
        state["cause"] = _error_state(exc.__cause__, seen)
    if exc.__suppress_context__:
        state["suppress_context"] = True
    return state


def _rebuild(state: dict[str, Any]) -> BaseException:
    kind = resolve(state["module"], state["type"])
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        raise LookupError(f"{state['module']}.{state['type']} is not an exception type")
    args = tuple(decode(arg) for arg in state["args"])
    exc: BaseException | None = None
    if kind.__module__ == "builtins":  # their constructors set their native state from args
        try:
            exc = kind(*args)
        except Exception:
            exc = None
    if exc is None:
        exc = kind.__new__(kind, *args)
        exc.args = args
    for name, value in state["attrs"].items():
        setattr(exc, name, decode(value))
    if "cause" in state:
        exc.__cause__ = _rebuild(state["cause"])
    exc.__suppress_context__ = bool(state.get("suppress_context"))
    return exc


def _rebuildable(exc: BaseException) -> dict[str, Any] | str:
    """The state that rebuilds ``exc`` as itself, or why it cannot be (tried here and now)."""
    try:
        state = _error_state(exc, set())
        rebuilt = _rebuild(state)
        if type(rebuilt) is type(exc) and _error_state(rebuilt, set()) == state:
            return state
        return "rebuilt from its args and attributes, it is not the same"
    except Refused as refused:
        return refused.problem
    except RecursionError:
        return "it is nested too deeply"
    except Exception as problem:  # its class refuses to be rebuilt so
        return f"rebuilding it raised {type(problem).__name__}: {_message(problem)}"


def _safe_arg(arg: Any) -> Any:
    try:
        return encode(arg)
    except (Refused, RecursionError):
        try:
            return repr(arg)
        except Exception:
            return f"<unprintable {type(arg).__qualname__}>"


def encode_error(exc: BaseException) -> tuple[str, bool]:
    """``exc`` as JSON (``type``, ``module`` and ``message`` for display; ``args``,
    ``attrs``, ``cause`` to rebuild it; ``traceback``), and whether it rebuilds as itself."""
    state = _rebuildable(exc)
    if isinstance(state, str):
        kind = type(exc)
        data = {"type": kind.__qualname__, "module": canonical_module(kind.__module__),
                "message": _message(exc), "args": [_safe_arg(arg) for arg in exc.args],
                "rebuildable": False, "why": state}
    else:
        data = {**state, "rebuildable": True}
    data["traceback"] = "".join(traceback.format_exception(exc))
    return JSON.encode(data), not isinstance(state, str)


def dump_error(exc: BaseException) -> str:
    return encode_error(exc)[0]


def rebuild_error(text: str, name: str, seq: int) -> BaseException:
    """The stored exception of step ``seq`` (``name``) as itself when it was stored so, else
    the :class:`StepFailed` that stands for it (the same one its first run raised)."""
    data = json.loads(text)
    if "args" not in data:
        return _legacy_error(data, name, seq)
    if data.get("rebuildable"):
        try:
            return _rebuild(data)
        except Exception:  # its class moved or changed since the first run
            pass
    try:
        args = tuple(decode(arg) for arg in data["args"])
    except Exception:  # its classes moved or changed since
        args = tuple(json.dumps(arg) for arg in data["args"])
    error_type = f"{data['module']}.{data['type']}"
    return StepFailed(name, seq, error_type, data["message"], args)


def _legacy_error(data: dict[str, Any], name: str, seq: int) -> BaseException:
    """An error stored before args were (type, module, message): itself if its type takes
    one message argument."""
    try:
        kind = resolve(data["module"], data["type"])
        if isinstance(kind, type) and issubclass(kind, Exception):
            error = kind(data["message"])
            if str(error) == data["message"]:
                return error
    except Exception:  # fall back to StepFailed below
        pass
    return StepFailed(name, seq, f"{data['module']}.{data['type']}", data["message"], ())


def error_summary(text: str) -> str:
    data = json.loads(text)
    return f"{data['type']}: {data['message']}"
