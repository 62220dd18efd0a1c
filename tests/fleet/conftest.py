"""The ``fleet`` fixture: worker processes that are always reaped, even paused ones."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import Fleet

from tests.support import Database


@pytest.fixture
def fleet(database: Database, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(database, tmp_path)
    yield fleet
    for proc in fleet.workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()
