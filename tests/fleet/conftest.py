"""The ``fleet`` fixture: worker processes that are always reaped, even paused ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import Fleet, reaped

from tests.support import Database


@pytest.fixture
def fleet(database: Database, tmp_path: Path) -> Iterator[Fleet]:
    with reaped(Fleet(database, tmp_path)) as fleet:
        yield fleet
