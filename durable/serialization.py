"""Self-describing JSON for step results, workflow inputs and results, and errors.

Replay must hand a workflow exactly what its first run got, whatever the annotations say, so a
stored value describes its own type. JSON-native values stay as they are: ``None``, ``bool``,
``int``, finite ``float``, ``str``, ``list`` and ``dict`` with ``str`` keys. Every other supported
value is an object tagged with the reserved key ``"$t"`` (``{"$t": "tuple", "v": [1, 2]}``):
``tuple``, ``set``, ``frozenset``, ``bytes``, ``bytearray``, non-finite ``float``, ``complex``,
``dict`` with other keys (or holding ``"$t"``), ``datetime``, ``date``, ``time``, ``timedelta``,
``timezone``, ``ZoneInfo`` (by key), ``Decimal``, ``UUID``, and, by their class's importable name
(:mod:`durable.naming`), enum members, dataclasses, named tuples and pydantic models. Types are
checked exactly: a subclass of a supported type, a class defined inside a function, a generator
or any other object raises :class:`SerializationError` naming the type and where it sits, before
anything is committed. Plain JSON (what rows written before the tags hold) reads as plain JSON.

An exception is stored with its type, ``args``, attributes (``__dict__``, ``__notes__`` and the
built-in ones such as ``OSError.errno``) and its ``__cause__`` chain, and rebuilt on replay
without calling ``__init__`` (as pickle restores exceptions). Whether it can be is decided on the
first run, by rebuilding it there: when it cannot, the first run already raises
:class:`StepFailed` in its place, and so does every replay.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import inspect
import json
import math
import traceback
import typing
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import TzInfo

from durable.exceptions import DeserializationError, SerializationError, StepFailed
from durable.naming import canonical_module, qualified_name, resolve

TAG = "$t"
_QUOTED_TAG = '"$t"'
_MISSING = object()


class _Refused(Exception):
    """A value (or a part of it) that cannot be stored; becomes a SerializationError."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _label(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else qualified_name(kind)


# --- values -------------------------------------------------------------------------------------


def _enc(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if kind is list:
        return [_enc(item) for item in value]
    if kind is dict:
        if TAG not in value and all(map(_is_str, value)):
            return {key: _enc(item) for key, item in value.items()}
        return {TAG: "dict", "v": [[_enc(key), _enc(item)] for key, item in value.items()]}
    encoder = _ENCODERS.get(kind) or _class_encoder(kind)
    return encoder(value)


def _is_str(key: Any) -> bool:
    return type(key) is str


def _items(tag: str) -> Callable[[Any], Any]:
    return lambda value: {TAG: tag, "v": [_enc(item) for item in value]}


def _members(tag: str) -> Callable[[Any], Any]:
    # Sorted by their JSON, so equal sets are stored alike (their order varies by process).
    return lambda value: {TAG: tag, "v": sorted((_enc(item) for item in value), key=_JSON.encode)}


def _clock(tag: str) -> Callable[[Any], Any]:
    def encode(value: Any) -> Any:
        data: dict[str, Any] = {TAG: tag, "v": value.replace(tzinfo=None, fold=0).isoformat()}
        if value.fold:
            data["fold"] = 1
        if value.tzinfo is not None:
            data["tz"] = _enc(value.tzinfo)
        return data
    return encode


def _enc_timezone(value: timezone) -> Any:
    args = value.__getinitargs__()  # type: ignore[attr-defined]
    return {TAG: "timezone", "v": [_enc(arg) for arg in args]}  # (offset[, name])


def _enc_zoneinfo(value: ZoneInfo) -> Any:
    if value.key is None:
        raise _Refused("a ZoneInfo without a key (read from a file) cannot be found again")
    return {TAG: "zoneinfo", "v": value.key}


def _b64(tag: str) -> Callable[[Any], Any]:
    return lambda value: {TAG: tag, "v": base64.b64encode(value).decode("ascii")}


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    tuple: _items("tuple"), set: _members("set"), frozenset: _members("frozenset"),
    bytes: _b64("bytes"), bytearray: _b64("bytearray"),
    datetime: _clock("datetime"), time: _clock("time"),
    date: lambda value: {TAG: "date", "v": value.isoformat()},
    timedelta: lambda value: {TAG: "timedelta", "v": [value.days, value.seconds,
                                                      value.microseconds]},
    timezone: _enc_timezone, ZoneInfo: _enc_zoneinfo,
    TzInfo: lambda value: {TAG: "tzinfo", "v": value.__reduce__()[1][0]},  # pydantic's
    Decimal: lambda value: {TAG: "decimal", "v": str(value)},
    uuid.UUID: lambda value: {TAG: "uuid", "v": str(value)},
    complex: lambda value: {TAG: "complex", "v": [_enc(value.real), _enc(value.imag)]},
}
"""Encoders by exact type; classes met later (enums, dataclasses, ...) are added once checked."""

_HINTS = {"generator": "a step must return a value: collect the items in a list",
          "async_generator": "a step must return a value: collect the items in a list",
          "coroutine": "await it"}


def _class_name(kind: type) -> str:
    """``module:qualname`` of a class that resolves back to itself, else refused."""
    module, qualname = canonical_module(kind.__module__), kind.__qualname__
    try:
        found = resolve(module, qualname)
    except LookupError as exc:
        raise _Refused(f"{_label(kind)} cannot be found again by its name ({exc})") from None
    if found is not kind:
        raise _Refused(f"{_label(kind)} is not the object its module has under that name")
    return f"{module}:{qualname}"


def _class_encoder(kind: type) -> Callable[[Any], Any]:
    encode: Callable[[str, Any], Any]
    if issubclass(kind, enum.Enum):
        encode = _enc_enum
    elif issubclass(kind, BaseModel):
        encode = _enc_model
    elif issubclass(kind, tuple) and hasattr(kind, "_fields"):
        encode = _enc_namedtuple
    elif dataclasses.is_dataclass(kind):
        encode = _enc_dataclass
    else:
        hint = _HINTS.get(kind.__name__) if kind.__module__ == "builtins" else None
        raise _Refused(f"{_label(kind)} is not a supported type" + (f" ({hint})" if hint else ""))
    encoder = functools.partial(encode, _class_name(kind))
    _ENCODERS[kind] = encoder
    return encoder


def _enc_enum(name: str, value: enum.Enum) -> Any:
    if isinstance(value, enum.Flag):
        return {TAG: "enum", "c": name, "v": _enc(value.value)}
    return {TAG: "enum", "c": name, "n": value.name}


def _enc_model(name: str, value: BaseModel) -> Any:
    # Its pickle state (fields, extra, fields set, private attributes), restored without
    # validation: its JSON would not do (a tuple in an ``Any`` field comes back a list).
    state = value.__getstate__()
    return {TAG: "model", "c": name, "v": {key: _enc(item) for key, item in state.items()}}


def _enc_namedtuple(name: str, value: tuple[Any, ...]) -> Any:
    return {TAG: "namedtuple", "c": name, "v": [_enc(item) for item in value]}


def _enc_dataclass(name: str, value: Any) -> Any:
    state = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name, _MISSING)
        if item is not _MISSING:
            state[field.name] = _enc(item)
    for key, item in getattr(value, "__dict__", {}).items():
        if key not in state:
            state[key] = _enc(item)
    return {TAG: "dataclass", "c": name, "v": state}


def _dec(data: Any) -> Any:
    kind = type(data)
    if kind is list:
        return [_dec(item) for item in data]
    if kind is dict:
        tag = data.get(TAG)
        if tag is None:
            return {key: _dec(item) for key, item in data.items()}
        return _DECODERS[tag](data)
    return data


@functools.lru_cache(maxsize=512)
def _class(name: str) -> Any:
    module, _, qualname = name.partition(":")
    return resolve(module, qualname)


def _dec_dataclass(data: Any) -> Any:
    kind = _class(data["c"])
    value = kind.__new__(kind)
    for key, item in data["v"].items():
        object.__setattr__(value, key, _dec(item))
    return value


def _dec_model(data: Any) -> Any:
    kind = _class(data["c"])
    value = kind.__new__(kind)
    value.__setstate__({key: _dec(item) for key, item in data["v"].items()})
    return value


def _dec_enum(data: Any) -> Any:
    kind = _class(data["c"])
    return kind[data["n"]] if "n" in data else kind(_dec(data["v"]))


def _dec_clock(kind: Any) -> Callable[[Any], Any]:
    return lambda data: kind.fromisoformat(data["v"]).replace(
        tzinfo=_dec(data.get("tz")), fold=data.get("fold", 0))


def _decoded(data: Any) -> list[Any]:
    return [_dec(item) for item in data["v"]]


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "tuple": lambda data: tuple(_decoded(data)),
    "set": lambda data: set(_decoded(data)),
    "frozenset": lambda data: frozenset(_decoded(data)),
    "dict": lambda data: {_dec(key): _dec(item) for key, item in data["v"]},
    "bytes": lambda data: base64.b64decode(data["v"]),
    "bytearray": lambda data: bytearray(base64.b64decode(data["v"])),
    "float": lambda data: float(data["v"]),
    "complex": lambda data: complex(*_decoded(data)),
    "datetime": _dec_clock(datetime), "time": _dec_clock(time),
    "date": lambda data: date.fromisoformat(data["v"]),
    "timedelta": lambda data: timedelta(*data["v"]),
    "timezone": lambda data: timezone(*_decoded(data)),
    "zoneinfo": lambda data: ZoneInfo(data["v"]),
    "tzinfo": lambda data: TzInfo(data["v"]),
    "decimal": lambda data: Decimal(data["v"]),
    "uuid": lambda data: uuid.UUID(data["v"]),
    "enum": _dec_enum,
    "model": _dec_model,
    "namedtuple": lambda data: _class(data["c"])(*_decoded(data)),
    "dataclass": _dec_dataclass,
}


def _locate(value: Any, path: str = "") -> str:
    """Where in ``value`` the first part that cannot be stored sits (``[2]['key']``)."""
    kind = type(value)
    parts: Iterable[tuple[str, Any]] = ()
    if kind in (list, tuple) or (issubclass(kind, tuple) and hasattr(kind, "_fields")):
        parts = ((f"[{index}]", item) for index, item in enumerate(value))
    elif kind in (set, frozenset):
        parts = ((" (a member)", item) for item in value)
    elif kind is dict:
        parts = (part for key, item in value.items()
                 for part in ((f" (the key {key!r})", key), (f"[{key!r}]", item)))
    elif issubclass(kind, BaseModel):
        parts = ((f".{key}", item) for key, item in vars(value).items())
    elif dataclasses.is_dataclass(kind):
        parts = ((f".{field.name}", getattr(value, field.name, None))
                 for field in dataclasses.fields(value))
    for step, item in parts:
        try:
            _enc(item)
        except (_Refused, RecursionError):
            return _locate(item, path + step)
    return path


def _ready(value: Any, what: str) -> Any:
    """``value`` as JSON-ready data (tags where needed), else a SerializationError."""
    try:
        return _enc(value)
    except _Refused as refused:
        where = _locate(value)
        raise SerializationError(what, refused.problem + (f" (at {where})" if where else "")
                                 ) from refused.__cause__
    except RecursionError:
        raise SerializationError(what, "it is nested too deeply or contains itself") from None


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _text(data: Any, what: str) -> str:
    try:
        return _JSON.encode(data)
    except (ValueError, RecursionError) as exc:  # an int too long for str(), say
        raise SerializationError(what, str(exc)) from exc


def dump(value: Any, what: str) -> str:
    """``value`` as self-describing JSON; :class:`SerializationError` naming ``what`` and the
    type if it cannot come back as itself."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int and -(10**15) < value < 10**15:
        return str(value)
    return _text(_ready(value, what), what)


def load(text: str, what: str = "a stored value") -> Any:
    """The value :func:`dump` stored (plain JSON reads as plain JSON)."""
    try:
        data = json.loads(text)
        return _dec(data) if _QUOTED_TAG in text else data
    except (ValueError, LookupError, TypeError, AttributeError, ValidationError) as exc:
        raise DeserializationError(what, f"{type(exc).__name__}: {exc}") from exc


# --- workflow arguments -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def adapter(annotation: Any) -> TypeAdapter[Any]:
    try:
        return _adapter(annotation)
    except TypeError:  # unhashable annotation
        return TypeAdapter(annotation)


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
    """Stores a call's arguments (by parameter name, each self-describing) and rebuilds
    ``(args, kwargs)`` with the very types the caller passed."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.signature = inspect.signature(fn)

    def dump(self, args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> str:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SerializationError(what, str(exc)) from exc
        parts = {name: _ready(value, f"{what} argument {name!r}")
                 for name, value in bound.arguments.items()}
        return _text(parts, what)

    def load(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments :meth:`dump` stored."""
        arguments = load(text, "the stored input")
        if not isinstance(arguments, dict):
            raise DeserializationError("the stored input", "it is not a JSON object")
        bound = inspect.BoundArguments(self.signature, arguments)
        return bound.args, bound.kwargs

    def from_plain_json(self, text: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments given as plain JSON by parameter name (``oneshot submit --input``),
        validated into the parameters' annotated types by pydantic; store them with
        :meth:`dump`. Raises ValueError when they do not fit."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("expected a JSON object of arguments by parameter name")
        hints, params = type_hints(self.fn), self.signature.parameters
        arguments = {}
        for name, value in raw.items():
            param = params.get(name)
            if param is None:
                raise ValueError(f"no parameter named {name!r}")
            hint = hints.get(name, Any)
            if param.kind is param.VAR_POSITIONAL:
                hint = tuple[hint, ...]  # type: ignore[valid-type]
            elif param.kind is param.VAR_KEYWORD:
                hint = dict[str, hint]  # type: ignore[valid-type]
            arguments[name] = adapter(hint).validate_python(value)
        bound = inspect.BoundArguments(self.signature, arguments)
        return bound.args, bound.kwargs


# --- errors -------------------------------------------------------------------------------------

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
    """What rebuilds ``exc``: type, args, attributes and cause, tagged; else _Refused."""
    if id(exc) in seen:
        raise _Refused("its __cause__ chain loops")
    seen.add(id(exc))
    kind = type(exc)
    _class_name(kind)
    if any(slot not in ("__dict__", "__weakref__") for cls in kind.__mro__
           for slot in _slots(cls)):
        raise _Refused(f"{_label(kind)} keeps state in __slots__")
    attrs = {}
    for base, names in _NATIVE_STATE:
        if isinstance(exc, base):
            for name in names:
                value = getattr(exc, name, None)
                if value is not None:  # None is unset (OSError prints a filename2 set to None)
                    attrs[name] = _enc(value)
    attrs.update((name, _enc(value)) for name, value in vars(exc).items())
    state: dict[str, Any] = {"type": kind.__qualname__, "module": canonical_module(kind.__module__),
                             "message": _message(exc), "attrs": attrs,
                             "args": [_enc(arg) for arg in exc.args]}
    if exc.__cause__ is not None:
        state["cause"] = _error_state(exc.__cause__, seen)
    if exc.__suppress_context__:
        state["suppress_context"] = True
    return state


def _rebuild(state: dict[str, Any]) -> BaseException:
    kind = resolve(state["module"], state["type"])
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        raise LookupError(f"{state['module']}.{state['type']} is not an exception type")
    args = tuple(_dec(arg) for arg in state["args"])
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
        setattr(exc, name, _dec(value))
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
    except _Refused as refused:
        return refused.problem
    except RecursionError:
        return "it is nested too deeply"
    except Exception as problem:  # its class refuses to be rebuilt so
        return f"rebuilding it raised {type(problem).__name__}: {_message(problem)}"


def _safe_arg(arg: Any) -> Any:
    try:
        return _enc(arg)
    except (_Refused, RecursionError):
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
    return _JSON.encode(data), not isinstance(state, str)


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
        except Exception:  # pragma: no cover - its class moved or changed since
            pass
    try:
        args = tuple(_dec(arg) for arg in data["args"])
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
