"""Directories only their owner can enter, whatever the umask: task output, spools and backups
may hold secrets.

``Path.mkdir(parents=True, mode=0o700)`` gives the mode to the last directory only; the parents
it creates get ``0o777`` less the umask, which is world-readable under a permissive umask.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and each missing parent with mode 0700 (existing ones are left as
    they are). Raises OSError like ``mkdir``."""
    missing = []
    current = directory
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created meanwhile by another process
            path.mkdir(mode=0o700)
