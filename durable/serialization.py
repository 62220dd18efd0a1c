"""Self-describing JSON for step results and workflow inputs and results.

Replay must hand a workflow exactly what its first run got, whatever the annotations say, so a
stored value describes its own type. JSON-native values stay as they are: ``None``, ``bool``,
``int``, finite ``float``, ``str``, ``list`` and ``dict`` with ``str`` keys. Every other supported
value is an object tagged with the reserved key ``"$t"`` (``{"$t": "tuple", "v": [1, 2]}``):
``tuple``, ``set``, ``frozenset``, ``bytes``, ``bytearray``, non-finite ``float``, ``complex``,
``dict`` with other keys (or holding ``"$t"``), ``datetime``, ``date``, ``time``, ``timedelta``,
their time zones (``timezone``, ``ZoneInfo`` by key, pydantic's ``TzInfo``), ``Decimal``,
``UUID``, and, by their class's importable name (:mod:`durable.naming`), enum members,
dataclasses, named tuples and pydantic models (restored from their pickle state). Types are
checked exactly: a subclass of a supported type, a class defined inside a function, a generator
or any other object raises :class:`SerializationError` naming the type and where it sits, before
anything is committed. Plain JSON (what rows written before the tags hold) reads as plain JSON.
Exceptions are stored with these values by :mod:`durable.error_codec`.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import inspect
import json
import math
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

from durable.exceptions import DeserializationError, SerializationError
from durable.naming import canonical_module, qualified_name, resolve

TAG = "$t"
_QUOTED_TAG = '"$t"'
_MISSING = object()


class Refused(Exception):
    """A value (or a part of it) that cannot be stored; becomes a SerializationError."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def label(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else qualified_name(kind)


# --- values -------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data, tagged where needed; :class:`Refused` if it cannot be."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if kind is list:
        return [encode(item) for item in value]
    if kind is dict:
        if TAG not in value and all(map(_is_str, value)):
            return {key: encode(item) for key, item in value.items()}
        return {TAG: "dict", "v": [[encode(key), encode(item)] for key, item in value.items()]}
    encoder = _ENCODERS.get(kind) or _class_encoder(kind)
    return encoder(value)


def _is_str(key: Any) -> bool:
    return type(key) is str


def _items(tag: str) -> Callable[[Any], Any]:
    return lambda value: {TAG: tag, "v": [encode(item) for item in value]}


def _members(tag: str) -> Callable[[Any], Any]:
    # Sorted by their JSON, so equal sets are stored alike (their order varies by process).
    return lambda value: {TAG: tag, "v": sorted((encode(item) for item in value), key=JSON.encode)}


def _clock(tag: str) -> Callable[[Any], Any]:
    def encode_clock(value: Any) -> Any:
        data: dict[str, Any] = {TAG: tag, "v": value.replace(tzinfo=None, fold=0).isoformat()}
        if value.fold:
            data["fold"] = 1
        if value.tzinfo is not None:
            data["tz"] = encode(value.tzinfo)
        return data
    return encode_clock


def _enc_timezone(value: timezone) -> Any:
    args = value.__getinitargs__()  # type: ignore[attr-defined]
    return {TAG: "timezone", "v": [encode(arg) for arg in args]}  # (offset[, name])


def _enc_zoneinfo(value: ZoneInfo) -> Any:
    if value.key is None:
        raise Refused("a ZoneInfo without a key (read from a file) cannot be found again")
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
    complex: lambda value: {TAG: "complex", "v": [encode(value.real), encode(value.imag)]},
}
"""Encoders by exact type; classes met later (enums, dataclasses, ...) are added once checked."""

_HINTS = {"generator": "collect its items in a list",
          "async_generator": "collect its items in a list", "coroutine": "await it"}


def class_name(kind: type) -> str:
    """``module:qualname`` of a class that resolves back to itself, else refused."""
    module, qualname = canonical_module(kind.__module__), kind.__qualname__
    try:
        found = resolve(module, qualname)
    except LookupError as exc:
        raise Refused(f"{label(kind)} cannot be found again by its name ({exc})") from None
    if found is not kind:
        raise Refused(f"{label(kind)} is not the object its module has under that name")
    return f"{module}:{qualname}"


def _class_encoder(kind: type) -> Callable[[Any], Any]:
    by_name: Callable[[str, Any], Any]
    if issubclass(kind, enum.Enum):
        by_name = _enc_enum
    elif issubclass(kind, BaseModel):
        by_name = _enc_model
    elif issubclass(kind, tuple) and hasattr(kind, "_fields"):
        by_name = _enc_namedtuple
    elif dataclasses.is_dataclass(kind):
        by_name = _enc_dataclass
    else:
        hint = _HINTS.get(kind.__name__) if kind.__module__ == "builtins" else None
        raise Refused(f"{label(kind)} is not a supported type" + (f" ({hint})" if hint else ""))
    encoder = functools.partial(by_name, class_name(kind))
    _ENCODERS[kind] = encoder
    return encoder


def _enc_enum(name: str, value: enum.Enum) -> Any:
    if isinstance(value, enum.Flag):
        return {TAG: "enum", "c": name, "v": encode(value.value)}
    return {TAG: "enum", "c": name, "n": value.name}


def _enc_model(name: str, value: BaseModel) -> Any:
    # Its pickle state (fields, extra, fields set, private attributes), restored without
    # validation: its JSON would not do (a tuple in an ``Any`` field comes back a list).
    state = value.__getstate__()
    return {TAG: "model", "c": name, "v": {key: encode(item) for key, item in state.items()}}


def _enc_namedtuple(name: str, value: tuple[Any, ...]) -> Any:
    return {TAG: "namedtuple", "c": name, "v": [encode(item) for item in value]}


def _enc_dataclass(name: str, value: Any) -> Any:
    state = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name, _MISSING)
        if item is not _MISSING:
            state[field.name] = encode(item)
    for key, item in getattr(value, "__dict__", {}).items():
        if key not in state:
            state[key] = encode(item)
    return {TAG: "dataclass", "c": name, "v": state}


def decode(data: Any) -> Any:
    """What :func:`encode` made ``data`` from."""
    kind = type(data)
    if kind is list:
        return [decode(item) for item in data]
    if kind is dict:
        tag = data.get(TAG)
        if tag is None:
            return {key: decode(item) for key, item in data.items()}
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
        object.__setattr__(value, key, decode(item))
    return value


def _dec_model(data: Any) -> Any:
    kind = _class(data["c"])
    value = kind.__new__(kind)
    value.__setstate__({key: decode(item) for key, item in data["v"].items()})
    return value


def _dec_enum(data: Any) -> Any:
    kind = _class(data["c"])
    return kind[data["n"]] if "n" in data else kind(decode(data["v"]))


def _dec_clock(kind: Any) -> Callable[[Any], Any]:
    return lambda data: kind.fromisoformat(data["v"]).replace(
        tzinfo=decode(data.get("tz")), fold=data.get("fold", 0))


def _decoded(data: Any) -> list[Any]:
    return [decode(item) for item in data["v"]]


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "tuple": lambda data: tuple(_decoded(data)),
    "set": lambda data: set(_decoded(data)),
    "frozenset": lambda data: frozenset(_decoded(data)),
    "dict": lambda data: {decode(key): decode(item) for key, item in data["v"]},
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
            encode(item)
        except (Refused, RecursionError):
            return _locate(item, path + step)
    return path


def _ready(value: Any, what: str) -> Any:
    """``value`` as JSON-ready data (tags where needed), else a SerializationError."""
    try:
        return encode(value)
    except Refused as refused:
        where = _locate(value)
        raise SerializationError(what, refused.problem + (f" (at {where})" if where else "")
                                 ) from refused.__cause__
    except RecursionError:
        raise SerializationError(what, "it is nested too deeply or contains itself") from None


JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _text(data: Any, what: str) -> str:
    try:
        return JSON.encode(data)
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
        return decode(data) if _QUOTED_TAG in text else data
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
