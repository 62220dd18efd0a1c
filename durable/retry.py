"""Retry policies for durable steps: values, built into tenacity retryers.

What retries is named: by default only transient I/O errors (``OSError``, which covers
connection errors, and ``TimeoutError``); a step lists other exception types itself. Backoff is
exponential with jitter. ``sleep`` can be replaced (tests pass a fake that records the waits),
so no test ever sleeps for real.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON
    sleep: Callable[[float], Awaitable[Any]] = field(default=anyio.sleep, compare=False)

    @classmethod
    def from_settings(cls, retry: Any) -> RetryPolicy:
        """From ``OneshotSettings.retry`` (attempts and backoff; ``retry_on`` stays the default)."""
        return cls(
            attempts=retry.attempts, initial_backoff=retry.initial_backoff,
            max_backoff=retry.max_backoff, multiplier=retry.multiplier, jitter=retry.jitter,
        )

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            # Not wait_exponential_jitter: tenacity 9.2 deprecates its `initial` argument
            # (a DeprecationWarning on every step) and older releases lack its replacement.
            wait=wait_exponential(
                multiplier=self.initial_backoff, max=self.max_backoff, exp_base=self.multiplier,
            ) + wait_random(0, self.jitter),
            retry=retry_if_exception_type(self.retry_on),
            sleep=self.sleep,
            reraise=True,
        )


NO_RETRY = RetryPolicy(attempts=1)
