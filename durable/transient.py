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
from collections.abc import Callable
from typing import Any

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

Transient = Callable[[BaseException], bool]


def retrying(transient: Transient, what: str, seconds: float) -> AsyncRetrying:
    """A tenacity retrier for ``what`` ("read", "write") that retries the exceptions for which
    ``transient`` is true for up to ``seconds``, then re-raises the last one."""
    return AsyncRetrying(**_policy(transient, what, seconds))


def retrying_in_thread(transient: Transient, what: str, seconds: float) -> Retrying:
    """The same, blocking: for SQLite's writer thread."""
    return Retrying(**_policy(transient, what, seconds))


def _policy(transient: Transient, what: str, seconds: float) -> dict[str, Any]:
    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning("database %s failed (attempt %d), retrying for up to %g s: %s", what,
                       state.attempt_number, seconds, driver_message(error) if error else "?")

    return {"retry": retry_if_exception(transient), "reraise": True,
            "stop": stop_after_delay(seconds),
            "wait": wait_random_exponential(multiplier=0.05, max=2.0), "before_sleep": report}
