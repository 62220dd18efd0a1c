"""What "replay equals the first run" compares (imported as ``tests.replay_support``).

:func:`same` is equality with the same types all the way down (``1 == 1.0 == True`` are not the
same; NaN is the same as NaN). :func:`facts` is what must survive of an exception: its type,
args, attributes, message and cause chain, as plain values (type names, not classes), so facts
gathered in another process can be pickled back to the test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from durable import StepFailed

OS_ERROR_STATE = ("errno", "strerror", "filename", "filename2")


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return same(list(a), list(b)) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, set | frozenset):  # members are hashable and never NaN here
        return a == b and sorted(map(_typed, a)) == sorted(map(_typed, b))
    if isinstance(a, Decimal):  # NaN too, and 1.10 is not 1.1
        return str(a) == str(b)
    if isinstance(a, dt.datetime | dt.time):
        return a == b and repr(a) == repr(b) and a.fold == b.fold
    if isinstance(a, BaseModel):
        return same(dict(a), dict(b))
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, field.name), getattr(b, field.name))
                   for field in dataclasses.fields(a))
    return bool(a == b)


def _typed(value: Any) -> str:
    return f"{type(value).__qualname__}:{value!r}"


def type_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def facts(exc: BaseException | None) -> Any:
    """Type, args, ``__dict__`` (notes included), OSError's state, message and cause chain of
    ``exc``. A :class:`StepFailed` stands for what replay cannot rebuild: its cause (the
    original, on the first run only) is left out."""
    if exc is None:
        return None
    native = ({name: getattr(exc, name) for name in OS_ERROR_STATE}
              if isinstance(exc, OSError) else {})
    cause = None if isinstance(exc, StepFailed) else facts(exc.__cause__)
    return (type_name(type(exc)), exc.args, dict(vars(exc)), native, str(exc), cause)
