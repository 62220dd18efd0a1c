"""Self-describing JSON: every supported value and exception comes back as itself; the rest is
refused by name (values) or stands behind StepFailed (exceptions), the same way every time."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import json
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel

from durable import NonDeterminismError, SerializationError, StepFailed
from durable.error_codec import encode_error, error_summary, rebuild_error
from durable.exceptions import DeserializationError
from durable.naming import qualified_name
from durable.serialization import ArgumentCodec, dump, load
from tests.replay_support import facts, same


class Color(enum.Enum):
    RED = "red"
    BLUE = ("b", 1)


class Level(enum.IntEnum):
    LOW = 1


class Access(enum.Flag):
    READ = 1
    WRITE = 2


@dataclasses.dataclass
class Item:
    name: str
    tags: tuple[str, ...] = ()
    seen: set[int] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    when: dt.date
    amount: Decimal


class Pair(NamedTuple):
    left: Any
    right: Any


class Order(BaseModel):
    id: uuid.UUID
    placed: dt.datetime
    items: list[str]
    total: Decimal


class Loose(BaseModel):
    anything: Any


class Coded(Exception):
    """Several constructor arguments, one message for super(): not rebuildable by cls(*args)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Slotted(Exception):
    __slots__ = ("detail",)


VALUES: list[Any] = [
    None, True, False, 0, -7, 2**200, 1.5, -0.0, float("inf"), float("-inf"), "", "plain",
    "caf\u00e9 \U0001f600", "\ud800 lone surrogate", "\x00 nul", "$t", [], {}, [1, [2, [3]]],
    {"a": {"b": [1, "c"]}}, {"$t": "not a tag"}, {1: "int key", None: 0, (1, 2): "tuple key"},
    (), (1,), (1, (2, [3, (4,)])), {1, 2}, set(), frozenset({"a"}), {frozenset({1}), 2},
    b"", bytes(range(256)), b"\xff\xfe invalid utf-8", bytearray(b"\x00\x01"),
    dt.datetime(2024, 2, 29, 1, 2, 3, 4), dt.datetime(1, 1, 1),
    dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    dt.datetime(2024, 6, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")),
    dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
    dt.date(2000, 2, 29), dt.time(23, 59, 59, 999999), dt.time(1, tzinfo=dt.UTC),
    dt.timedelta(days=-3, seconds=5, microseconds=1), dt.UTC, ZoneInfo("America/New_York"),
    Decimal("1.10"), Decimal("-0"), Decimal("1E+400"), Decimal("NaN"), Decimal("-Infinity"),
    uuid.UUID(int=0), uuid.UUID("12345678-1234-5678-1234-567812345678"),
    complex(1, -2), complex(float("nan"), 0.0), Color.RED, Color.BLUE, Level.LOW,
    Access.READ | Access.WRITE, Access(0), Item("x", ("a",), {1}), Frozen(dt.date(2020, 1, 1),
                                                                          Decimal("9.99")),
    Pair(1, (2, 3)), Pair(Color.RED, b"\x80"),
    Order(id=uuid.UUID(int=5), placed=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), items=["a"],
          total=Decimal("12.50")),
    Order.model_validate_json('{"id": "12345678-1234-5678-1234-567812345678", "items": [],'
                              ' "placed": "2024-01-01T00:00:00+02:00", "total": "1.0"}'),
    Loose(anything=(1, {2}, b"\xff")),
    [(1, b"x"), {"k": {1, 2}}, [Item("y"), {Color.RED: frozenset({dt.date(2020, 1, 1)})}]],
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__qualname__)
def test_every_supported_value_comes_back_with_its_type_and_value(value: Any) -> None:
    """dump then load gives an equal value of the very same type, all the way down."""
    text = dump(value, "the value")
    assert text.isascii()
    assert same(load(text), value), text


def test_equal_sets_are_stored_alike() -> None:
    """A set's members are stored sorted: its iteration order (which varies with its history
    and, for str, from process to process) does not change what is stored."""
    small = {"alpha", "beta", "gamma"}
    grown = {str(n) for n in range(1000)} | small
    grown -= {str(n) for n in range(1000)}
    assert grown == small  # usually iterated in another order
    assert dump(small, "v") == dump(grown, "v") == (
        '{"$t":"set","v":["alpha","beta","gamma"]}')


def test_nan_comes_back_as_nan() -> None:
    """Non-finite floats are tagged: NaN is not turned into null or a string."""
    assert same(load(dump([float("nan"), {"x": float("nan")}], "v")),
                [float("nan"), {"x": float("nan")}])


def test_json_native_values_are_stored_as_plain_json() -> None:
    """Values JSON already has are stored untagged (what earlier rows hold, and cheap)."""
    assert dump({"a": [1, 2.5, None, True, "s"]}, "v") == '{"a":[1,2.5,null,true,"s"]}'
    assert dump(3, "v") == "3" and dump("x", "v") == '"x"'
    assert load('{"a": [1, "2024-01-01T00:00:00"]}') == {"a": [1, "2024-01-01T00:00:00"]}


@pytest.mark.parametrize(("value", "named"), [
    (object(), "object is not a supported type"),
    ((n for n in range(2)), "generator is not a supported type"),
    (collections.OrderedDict(a=1), "collections.OrderedDict is not a supported type"),
    (collections.defaultdict(list), "collections.defaultdict is not a supported type"),
    (Path("/tmp"), "pathlib.PosixPath is not a supported type"),
    (Exception("x"), "Exception is not a supported type"),
    (Loose(anything=Path("x")), "pathlib.PosixPath is not a supported type (at .anything)"),
    ([1, {"k": {object()}}], "object is not a supported type"),
], ids=lambda v: type(v).__qualname__ if not isinstance(v, str) else "")
def test_a_value_that_cannot_come_back_as_itself_is_refused_naming_its_type(
        value: Any, named: str) -> None:
    """SerializationError names the type (and where it sits), never a silent change of type."""
    with pytest.raises(SerializationError) as refused:
        dump(value, "the result of step 'x'")
    assert refused.value.what == "the result of step 'x'"
    assert refused.value.problem.startswith(named), refused.value.problem


def test_subclasses_and_local_classes_are_refused() -> None:
    """Exact types only: a str subclass would come back a str, a local class cannot be found."""

    class Name(str):
        pass

    @dataclasses.dataclass
    class Local:
        x: int

    class Mood(enum.Enum):
        OK = 1

    for value in (Name("a"), Local(1), Mood.OK, [1, (2, Name("b"))]):
        with pytest.raises(SerializationError, match=r"Name|Local|Mood"):
            dump(value, "v")


def test_refusal_says_where_the_value_sits() -> None:
    """The path to the offending part is part of the message."""

    async def coroutine_function() -> None: ...

    pending = coroutine_function()
    try:
        with pytest.raises(SerializationError) as refused:
            dump([0, {"k": (pending,)}], "v")
        assert refused.value.problem == ("coroutine is not a supported type (await it) "
                                         "(at [1]['k'][0])")
    finally:
        pending.close()


def test_async_generator_and_self_containing_values_are_refused() -> None:
    """An async generator is named; a list that contains itself fails cleanly."""

    async def numbers() -> Any:
        yield 1

    with pytest.raises(SerializationError, match="async_generator is not a supported type"):
        dump(numbers(), "v")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="nested too deeply or contains itself"):
        dump(loop, "v")


def test_time_zones_that_cannot_be_found_again_are_refused(tmp_path: Path) -> None:
    """A ZoneInfo read from a file has no key; a foreign tzinfo class is not supported."""
    source = Path("/usr/share/zoneinfo/UTC")
    if not source.exists():
        pytest.skip("no system time zone database")
    with source.open("rb") as file:
        keyless = ZoneInfo.from_file(file)
    with pytest.raises(SerializationError, match="ZoneInfo without a key"):
        dump(dt.datetime(2024, 1, 1, tzinfo=keyless), "v")

    class Fixed(dt.tzinfo):
        def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(0)

    with pytest.raises(SerializationError, match="Fixed is not a supported type"):
        dump(dt.datetime(2024, 1, 1, tzinfo=Fixed()), "v")


def test_a_stored_value_whose_class_is_gone_raises_deserialization_error() -> None:
    """Unknown classes or tags: a clear error naming what was being rebuilt."""
    for text in ('{"$t":"enum","c":"no_such_module_x:Color","n":"RED"}',
                 '{"$t":"no-such-tag","v":1}', "{not json"):
        with pytest.raises(DeserializationError, match="cannot rebuild the stored result"):
            load(text, "the stored result")


# --- arguments ----------------------------------------------------------------------------------


def unannotated(when, pair, *rest, key, **extra):  # type: ignore[no-untyped-def]
    return None


def annotated(when: dt.datetime, pair: tuple[int, str], *rest: int, key: set[str],
              **extra: bytes) -> None:
    return None


@pytest.mark.parametrize("fn", [unannotated, annotated])
def test_arguments_come_back_as_the_caller_passed_them(fn: Any) -> None:
    """With or without annotations, ArgumentCodec stores and rebuilds the very types."""
    codec = ArgumentCodec(fn)
    args = (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), (1, "a"), 2, 3)
    kwargs = {"key": {"x"}, "blob": b"\xff"}
    stored = codec.dump(args, kwargs, "wf")
    assert set(json.loads(stored)) == {"when", "pair", "rest", "key", "extra"}
    back_args, back_kwargs = codec.load(stored)
    assert same(back_args, args) and same(back_kwargs, kwargs)


def test_plain_json_input_is_validated_into_the_annotated_types() -> None:
    """`oneshot submit --input`: plain JSON becomes the parameters' types, then stored tagged."""
    codec = ArgumentCodec(annotated)
    args, kwargs = codec.from_plain_json(
        '{"when": "2024-01-01T00:00:00Z", "pair": [1, "a"], "rest": [4], "key": ["x"]}')
    assert type(args[0]) is dt.datetime and args[0] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert same(args[1:], ((1, "a"), 4))
    assert same(kwargs, {"key": {"x"}})
    assert same(codec.load(codec.dump(args, kwargs, "wf")), (args, kwargs))
    for bad in ('[1]', '{"nope": 1}', '{"when": "not a date"}'):
        with pytest.raises(ValueError):
            codec.from_plain_json(bad)


def test_unbindable_or_unstorable_arguments_are_refused_naming_the_argument() -> None:
    """Missing arguments and values that cannot be stored raise SerializationError."""
    codec = ArgumentCodec(unannotated)
    with pytest.raises(SerializationError, match="missing a required argument"):
        codec.dump((), {}, "wf")
    with pytest.raises(SerializationError, match=r"wf argument 'pair'.*object is not"):
        codec.dump((1, object()), {"key": 1}, "wf")


# --- exceptions ---------------------------------------------------------------------------------


def chained() -> BaseException:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise Coded(502, "bad gateway") from inner
    except Coded as outer:
        return outer


def with_notes() -> BaseException:
    error = ValueError("a", 1, (2, 3), {"k": b"v"})
    error.add_note("first note")
    error.add_note("second note")
    return error


def suppressed() -> BaseException:
    try:
        try:
            raise KeyError("hidden")
        except KeyError:
            raise RuntimeError("context suppressed") from None
    except RuntimeError as error:
        return error


def with_attributes() -> BaseException:
    error = Coded(404, "missing")
    error.when = dt.date(2024, 1, 1)  # type: ignore[attr-defined]
    return error


def with_collections() -> BaseException:
    error = Coded(3, "several")
    error.seen = {"a", "b", "c", "d"}  # type: ignore[attr-defined]
    error.order = Order(id=uuid.UUID(int=1), placed=dt.datetime(2024, 1, 1),  # type: ignore[attr-defined]
                        items=["x"], total=Decimal("1"))
    return error


REBUILDABLE: list[Any] = [
    lambda: KeyError("k"),
    lambda: ValueError(),
    lambda: Coded(404, "no such record"),
    with_attributes,
    with_collections,
    lambda: OSError(2, "No such file or directory", "in.txt"),
    lambda: OSError(18, "Invalid cross-device link", "a", None, "b"),
    lambda: PermissionError(13, "Permission denied"),
    lambda: OSError("just a message"),
    lambda: ConnectionResetError(),
    with_notes,
    chained,
    suppressed,
    lambda: TimeoutError("slow"),
    lambda: StopIteration(7),
    lambda: SyntaxError("bad", ("f.py", 1, 2, "x = (", 1, 3)),
    lambda: UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    lambda: ImportError("no module", name="mod", path="/x"),
    lambda: subprocess.CalledProcessError(1, ["make"], b"out", b"err"),
    lambda: NonDeterminismError("task", 3, "a", "b"),
    lambda: StepFailed("step", 1, "mod.Type", "message", (1, "two")),
    lambda: SerializationError("the result", "object is not a supported type"),
]


@pytest.mark.parametrize("make", REBUILDABLE, ids=lambda make: facts(make())[0])
def test_exceptions_come_back_with_type_args_attributes_notes_and_cause(make: Any) -> None:
    """KeyError, user classes, OSError with errno and file names, several args, notes, causes."""
    original = make()
    text, rebuildable = encode_error(original)
    assert rebuildable, json.loads(text).get("why")
    replayed = rebuild_error(text, "step", 0)
    assert replayed is not original
    assert same(facts(replayed), facts(original))
    assert replayed.__suppress_context__ == original.__suppress_context__
    assert same(facts(rebuild_error(text, "step", 0)), facts(original))


def test_stored_errors_keep_the_keys_their_readers_use() -> None:
    """type, module and message (the CLI and the UI show them) and a traceback."""
    try:
        raise Coded(1, "boom")
    except Coded as error:
        text, _ = encode_error(error)
    data = json.loads(text)
    assert (data["type"], data["module"], data["message"]) == ("Coded", Coded.__module__,
                                                              "1: boom")
    assert "Traceback (most recent call last)" in data["traceback"]
    assert error_summary(text) == "Coded: 1: boom"


def cause_loop() -> BaseException:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    return first


def local_class() -> BaseException:
    class Local(Exception):
        pass
    return Local(1, "x")


def unstorable_arg() -> BaseException:
    return KeyError(object())


def unstorable_cause() -> BaseException:
    error = RuntimeError("outer")
    error.__cause__ = local_class()
    return error


def slotted() -> BaseException:
    error = Slotted("x")
    error.detail = 1
    return error


def exception_group() -> BaseException:
    return ExceptionGroup("several", [ValueError(1), KeyError(2)])


@pytest.mark.parametrize("make", [local_class, unstorable_arg, unstorable_cause, slotted,
                                  cause_loop, exception_group])
def test_an_exception_that_cannot_be_rebuilt_stands_behind_one_wrapper(make: Any) -> None:
    """StepFailed, with the original's qualified type, args (or their reprs) and message:
    the same on the first run (built from what was stored) and on every replay."""
    original = make()
    text, rebuildable = encode_error(original)
    assert not rebuildable
    first, replay = rebuild_error(text, "pkg.step", 4), rebuild_error(text, "pkg.step", 4)
    assert type(first) is type(replay) is StepFailed
    assert isinstance(first, StepFailed)
    assert (first.name, first.seq) == ("pkg.step", 4)
    assert first.error_type == qualified_name(type(original))
    assert first.message == str(original)
    assert same(facts(first), facts(replay))
    assert len(first.error_args) == len(original.args)
    assert str(first) == f"step 4 'pkg.step' failed: {first.error_type}: {original}"


def test_unstorable_args_are_kept_as_their_reprs_in_the_wrapper() -> None:
    """Args that cannot be stored become their repr(); the others stay themselves."""
    marker = object()
    original = local_class().__class__((1, 2), marker)
    first = rebuild_error(encode_error(original)[0], "s", 0)
    assert isinstance(first, StepFailed)
    assert same(first.error_args, ((1, 2), repr(marker)))


def test_errors_stored_before_args_were_kept_still_come_back() -> None:
    """Rows holding only type, module and message: itself if one message rebuilds it."""
    old = json.dumps({"type": "ValueError", "module": "builtins", "message": "bad"})
    assert same(facts(rebuild_error(old, "s", 0)), facts(ValueError("bad")))
    old = json.dumps({"type": "Coded", "module": Coded.__module__, "message": "1: x"})
    wrapper = rebuild_error(old, "s", 2)
    assert isinstance(wrapper, StepFailed)
    assert (wrapper.error_type, wrapper.message) == (f"{Coded.__module__}.Coded", "1: x")
