"""A task's concurrency slot, which a workflow gives back while it waits on work it started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import anyio


class Slot:
    """One unit of an orchestrator's capacity limiter, held while a task runs.

    A workflow waiting on a command or a child workflow it started gives its slot back
    (:meth:`given_back`): that work needs a slot of its own, and with every slot held by a
    workflow waiting for one, nothing would ever run again. The slot is taken back before
    the workflow goes on; concurrent waits of one workflow give it back once.
    """

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._held = False
        self._waits = 0

    async def __aenter__(self) -> Slot:
        await self._limiter.acquire_on_behalf_of(self)
        self._held = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._give_back()

    def _give_back(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self)

    @asynccontextmanager
    async def given_back(self) -> AsyncIterator[None]:
        """Inside: the slot is free for others; on the way out it is taken again (unless
        cancelled meanwhile, when the task is ending anyway)."""
        self._waits += 1
        if self._waits == 1:
            self._give_back()
        try:
            yield
        finally:
            self._waits -= 1
            if self._waits == 0 and not self._held:
                await self._limiter.acquire_on_behalf_of(self)
                self._held = True
