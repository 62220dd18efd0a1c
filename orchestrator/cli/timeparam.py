"""The TIME option type: an ISO date/time, or a duration ago (``90s``, ``10m``, ``2h``, ``1d``)."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import click

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TimeParam(click.ParamType[float, Any]):
    """Converts to seconds since the epoch. Naive date/times are local time."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        ago = _AGO.match(text)
        if ago:
            return time.time() - float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)]
        try:
            return dt.datetime.fromisoformat(text).timestamp()
        except ValueError:
            self.fail(f"{text!r} is neither an ISO date/time (2026-11-26T13:00) nor a "
                      "duration ago (90s, 10m, 2h, 1d)", param, ctx)


TIME = TimeParam()
