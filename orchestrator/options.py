"""A command's run options, stored with the task so a restart or recovery applies the same."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

from orchestrator.process import Limits

OnLost = Literal["interrupt", "restart", "fail"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    timeout: float | None = None
    idle_timeout: float | None = None
    adaptive: tuple[float, float, float] | None = None
    grace: float = 5.0
    on_lost: OnLost | None = None
    """What recovery does when the process is gone; None: ONESHOT_RECOVERY__MISSING_PROCESS."""

    @property
    def limits(self) -> Limits:
        return Limits(self.timeout, self.idle_timeout, self.adaptive, self.grace)

    def to_json(self) -> str | None:
        return None if self == RunOptions() else json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> RunOptions:
        if not text:
            return cls()
        data = json.loads(text)
        if data.get("adaptive") is not None:
            data["adaptive"] = tuple(data["adaptive"])
        return cls(**data)
