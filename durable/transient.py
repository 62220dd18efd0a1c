"""Riding out transient database failures: a lost connection, a lock or statement timeout, a
deadlock, a server restarting; on SQLite a lock held past ``busy_timeout``, a full disk, an I/O
error. The operation is run again (on PostgreSQL on a fresh pooled connection) with randomized
exponential backoff for up to ``database.retry_seconds``; each retry is logged loudly.

Only operations that certainly left nothing behind are retried: reads, PostgreSQL transactions
that failed before their commit (see :meth:`durable.postgres.PostgresStore._write`), and SQLite
batches, which are rolled back whole (see :func:`durable.sqlite_writes.apply_batch`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from durable.engine import driver_message

logger = logging.getLogger(__name__)

T = TypeVar("T")
Transient = Callable[[BaseException], bool]


async def retried(op: Callable[[], Awaitable[T]], transient: Transient, what: str,
                  seconds: float) -> T:
    """``op()``; if it raises an exception for which ``transient`` is true, run it again (and
    log each retry) for up to ``seconds``, then re-raise the last failure.

    The first attempt runs bare: almost every call succeeds at once, and it is a hot path (a
    read, a commit), so the tenacity retrier is built only once something failed. The retrier
    then starts from that failure: it logs it, waits, and counts it as attempt 1.
    """
    try:
        return await op()
    except Exception as exc:
        if not transient(exc):
            raise
        first = exc
    replayed = False
    async for attempt in AsyncRetrying(**_policy(transient, what, seconds)):
        with attempt:
            if not replayed:
                replayed = True
                raise first
            return await op()
    raise AssertionError("tenacity stopped without an outcome")


def retried_in_thread(op: Callable[[], T], transient: Transient, what: str,
                      seconds: float) -> T:
    """The same, blocking: for SQLite's writer thread."""
    try:
        return op()
    except Exception as exc:
        if not transient(exc):
            raise
        first = exc
    replayed = False
    for attempt in Retrying(**_policy(transient, what, seconds)):
        with attempt:
            if not replayed:
                replayed = True
                raise first
            return op()
    raise AssertionError("tenacity stopped without an outcome")


def _policy(transient: Transient, what: str, seconds: float) -> dict[str, Any]:
    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning("database %s failed (attempt %d), retrying for up to %g s: %s", what,
                       state.attempt_number, seconds, driver_message(error) if error else "?")

    return {"retry": retry_if_exception(transient), "reraise": True,
            "stop": stop_after_delay(seconds),
            "wait": wait_random_exponential(multiplier=0.05, max=2.0), "before_sleep": report}
