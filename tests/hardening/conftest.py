"""Fixtures of the hardening tests (faults injected into real processes and files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash.recovery_helpers import Site, site_at


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A SQLite site (tests/crash/recovery_helpers.py); fails the test if any process it
    started is left at the end."""
    with site_at(tmp_path / "site") as site:
        yield site
