"""Backups and integrity of a SQLite database: online backup, rotation, checks, repair.

A backup uses SQLite's online backup API on its own connection (from
:func:`durable.engine.connect_sqlite`), so the group-commit writer keeps committing meanwhile.
The copy is a consistent snapshot: the source connection holds one read transaction for the
whole copy (WAL lets the writer go on), so the backup never restarts however busy the writer
is and never mixes two states. It is written to a temporary file created ``0600``, verified,
fsynced and only then renamed to its name, so a backup name always holds a complete copy.

Nothing here moves or deletes a database file except :func:`move_aside`, which renames a
damaged one (and its ``-wal``/``-shm``) next to itself; it is never deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from durable.engine import ConnectionOptions, connect_sqlite
from durable.exceptions import DatabaseUnavailable, StoreError
from durable.private import make_private_dirs

__all__ = ["BackupResult", "IntegrityReport", "backup_name", "backup_sqlite", "damage_in",
           "damage_message", "default_backup_directory", "in_use_by", "inspect_sqlite",
           "move_aside", "periodic_backup", "rotate"]

PAGES_PER_STEP = 1024
"""Pages copied per backup step (4 MiB with 4 KiB pages): the progress granularity."""

MAX_REPORTED = 100
"""At most this many problems are asked of quick_check / integrity_check."""

BACKUP_NAME = re.compile(r"^oneshot-(\d{8}-\d{6})(?:-(\d+))?\.db$")
SIDE_FILES = ("-wal", "-shm", "-journal")

# sqlite3 error names meaning the file's content is damaged or is no database at all.
_DAMAGE_NAMES = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

Progress = Callable[[int, int], None]
"""Called as ``progress(pages_copied, pages_total)`` after each backup step."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    """A finished backup: where it is, what it holds, whether it checked out."""

    path: Path
    pages: int
    size: int  # bytes
    seconds: float
    counts: Mapping[str, int] = field(default_factory=dict)
    """Rows per table in the copy (equal to the source's at the snapshot; empty unverified)."""
    check: tuple[str, ...] = ()
    """``PRAGMA integrity_check`` of the copy (``("ok",)``); empty when not verified."""


@dataclass(frozen=True, slots=True)
class IntegrityReport:
    """What ``oneshot db check`` found in a SQLite file."""

    path: Path
    mode: str  # "quick_check" or "integrity_check"
    revision: str | None
    problems: tuple[str, ...] = ()
    """What the check listed besides "ok" (at most MAX_REPORTED)."""
    foreign_key_problems: int | None = None
    unreadable: str | None = None
    """Why SQLite cannot read the file as a database at all (None: it can)."""

    @property
    def damaged(self) -> bool:
        """The file cannot be read, the check found problems, or rows dangle."""
        return bool(self.unreadable or self.problems or self.foreign_key_problems)


# -- finding damage in an error ----------------------------------------------------------------


def damage_in(exc: BaseException) -> sqlite3.DatabaseError | None:
    """The SQLite "corrupt" / "not a database" error behind ``exc``, if there is one.

    Looks through exception groups, ``__cause__`` / ``__context__`` chains and SQLAlchemy's
    wrapped driver errors, so a damaged page met deep in a read or a group commit is found.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, sqlite3.DatabaseError) and str(
                getattr(error, "sqlite_errorname", "")).startswith(_DAMAGE_NAMES):
            return error
        if isinstance(error, DBAPIError) and isinstance(error.orig, BaseException):
            pending.append(error.orig)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        pending.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return None


def damage_message(exc: BaseException, url: str | None) -> str | None:
    """One line for a user whose database is damaged, or None if ``exc`` is something else."""
    damage = damage_in(exc)
    if damage is None:
        return None
    where = "the database"
    if url is not None:
        try:
            where = f"database {ConnectionOptions(url).sqlite_path or url}"
        except (DatabaseUnavailable, ValueError):
            where = f"database {url}"
    return (f"{where}: not a usable SQLite database ({damage}); `oneshot db check` lists the "
            "damage, `oneshot db check --repair` moves the file aside and starts a fresh one")


# -- backup --------------------------------------------------------------------------------


def backup_sqlite(options: ConnectionOptions, destination: Path, *, overwrite: bool = False,
                  verify: bool = True, pages_per_step: int = PAGES_PER_STEP,
                  progress: Progress | None = None) -> BackupResult:
    """Copy the database to ``destination`` (blocking: run it in a worker thread).

    ``verify`` runs ``PRAGMA integrity_check`` on the copy and compares its row counts with the
    source's at the snapshot; a mismatch deletes the copy and raises :class:`StoreError`.
    The copy is a single self-contained file (rollback journal mode, no ``-wal``).
    """
    source = _source_path(options)
    destination = destination.expanduser().absolute()
    if destination.exists() and destination.resolve() == source.resolve():
        raise StoreError(f"{destination} is the database itself; choose another path")
    if destination.is_dir():
        raise StoreError(f"{destination} is a directory")
    if destination.exists() and not overwrite:
        raise StoreError(f"{destination} exists (--force replaces it)")
    _make_private_dir(destination.parent)
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        _create_private(partial)
        counts, check, pages = _copy(options, partial, verify, pages_per_step, progress)
        _fsync(partial)
        os.replace(partial, destination)
        _fsync(destination.parent)
    except OSError as exc:
        raise StoreError(f"cannot write the backup {destination}: {exc.strerror or exc}"
                         ) from exc
    finally:
        for leftover in (partial, Path(f"{partial}-journal")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return BackupResult(destination, pages, destination.stat().st_size,
                        time.monotonic() - started, counts, check)


def _copy(options: ConnectionOptions, partial: Path, verify: bool, pages_per_step: int,
          progress: Progress | None) -> tuple[dict[str, int], tuple[str, ...], int]:
    def step(_status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    src = connect_sqlite(options)
    try:
        dst = sqlite3.connect(partial, isolation_level=None)
    except sqlite3.Error as exc:
        src.close()
        raise StoreError(f"cannot open {partial}: {exc}") from exc
    try:
        # One read transaction across every step: a snapshot that later commits (by the
        # writer, on other connections) neither change nor restart.
        src.execute("BEGIN")
        counts = _row_counts(src) if verify else {}
        src.backup(dst, pages=max(1, pages_per_step), progress=step, sleep=0.05)
        src.execute("COMMIT")
        dst.execute("PRAGMA journal_mode = DELETE")
        check: tuple[str, ...] = ()
        if verify:
            check = tuple(_check_lines(dst, "integrity_check"))
            if check != ("ok",):
                raise StoreError(f"the copy fails integrity_check ({check[0]}): the database "
                                 "is damaged; see `oneshot db check --integrity`")
            copied_counts = _row_counts(dst)
            if copied_counts != counts:
                raise StoreError(f"the copy's row counts {copied_counts} differ from the "
                                 f"database's {counts}")
        pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        return counts, check, pages
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnavailable(options.url, f"backup failed: {exc}") from exc
    finally:
        dst.close()
        if src.in_transaction:
            src.execute("ROLLBACK")
        src.close()


def backup_name(now: datetime | None = None) -> str:
    """``oneshot-YYYYmmdd-HHMMSS.db`` for ``now`` (UTC)."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    return f"oneshot-{stamp}.db"


def default_backup_directory(options: ConnectionOptions) -> Path:
    """Where periodic backups go when no directory is set: ``<database file>-backups``."""
    source = _source_path(options, must_exist=False)
    return source.with_name(source.name + "-backups")


def periodic_backup(options: ConnectionOptions, directory: Path, keep: int, *,
                    now: datetime | None = None, progress: Progress | None = None
                    ) -> tuple[BackupResult, list[Path]]:
    """Write ``<directory>/oneshot-YYYYmmdd-HHMMSS.db``, then keep only the newest ``keep``.

    Returns the backup and the old backups removed. Only files named like a backup are ever
    removed; a second backup within the same second gets a ``-N`` suffix.
    """
    directory = directory.expanduser().absolute()
    _make_private_dir(directory)
    base = backup_name(now)
    target, n = directory / base, 0
    while target.exists():
        n += 1
        target = directory / base.replace(".db", f"-{n}.db")
    result = backup_sqlite(options, target, progress=progress)
    return result, rotate(directory, keep)


def rotate(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups in ``directory`` (by their name's time)."""
    found: list[tuple[tuple[str, int], Path]] = []
    for path in directory.iterdir():
        match = BACKUP_NAME.match(path.name)
        if match and path.is_file():
            found.append(((match[1], int(match[2] or 0)), path))
    found.sort()
    removed = [path for _, path in found[:max(0, len(found) - max(keep, 0))]]
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


# -- integrity and repair ------------------------------------------------------------------


def inspect_sqlite(options: ConnectionOptions, *, full: bool = False) -> IntegrityReport:
    """Run quick_check (``full``: integrity_check), foreign_key_check and read the revision.

    A file SQLite cannot read at all gives a report with ``unreadable`` set instead of an
    error; other problems (permissions, a missing directory) raise DatabaseUnavailable.
    """
    path = _source_path(options, must_exist=False)
    mode = "integrity_check" if full else "quick_check"
    try:
        conn = connect_sqlite(options)
    except DatabaseUnavailable as exc:
        damage = damage_in(exc)
        if damage is None:
            raise
        return IntegrityReport(path, mode, None, unreadable=str(damage))
    revision: str | None = None
    try:
        revision = _revision(conn)
        problems = [line for line in _check_lines(conn, mode) if line != "ok"]
        problems += _torn_tail(conn, path)
        fk_problems = len(conn.execute("PRAGMA foreign_key_check").fetchall())
        return IntegrityReport(path, mode, revision, tuple(problems), fk_problems)
    except sqlite3.DatabaseError as exc:
        if damage_in(exc) is None:
            raise DatabaseUnavailable(options.url, str(exc)) from exc
        return IntegrityReport(path, mode, revision, unreadable=str(exc))
    finally:
        conn.close()


def move_aside(path: Path, now: datetime | None = None) -> list[Path]:
    """Rename the database and its side files to ``<db>.corrupt-YYYYmmdd-HHMMSS[-wal|-shm]``.

    Side files move first: a ``-wal`` left behind would be replayed into the fresh database.
    Returns the new paths, the database's first. Nothing is deleted.
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    base, n = path.with_name(f"{path.name}.corrupt-{stamp}"), 0
    while any(Path(f"{base}{s}").exists() for s in ("", *SIDE_FILES)):
        n += 1
        base = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    moved: list[Path] = []
    for suffix in (*SIDE_FILES, ""):
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{base}{suffix}")
            moved.append(Path(f"{base}{suffix}"))
    _fsync(path.parent)
    return sorted(moved, key=lambda moved_path: moved_path != base)


def in_use_by(path: Path) -> int | None:
    """The pid of another process holding SQLite locks on ``path``, or None (Linux only).

    A connection in WAL mode keeps a shared lock on its ``-shm`` file while open, so this
    finds an orchestrator or worker that has the database open, not only one mid-write.
    """
    if not sys.platform.startswith("linux"):
        return None
    # Byte ranges SQLite locks: the database file's lock bytes at 1 GiB, the -shm lock slots.
    for file, start, length in ((path, 0x40000000, 512), (Path(f"{path}-shm"), 120, 16)):
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue
        try:
            query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
            kind, _, _, _, pid = struct.unpack(
                "hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
        except OSError:
            continue
        finally:
            os.close(fd)
        if kind != fcntl.F_UNLCK:
            return int(pid)
    return None


# -- helpers -------------------------------------------------------------------------------


def _source_path(options: ConnectionOptions, *, must_exist: bool = True) -> Path:
    path = options.sqlite_path
    if path is None:
        raise DatabaseUnavailable(options.sa_url.render_as_string(hide_password=True),
                                  "backups and file checks work on SQLite only "
                                  "(for PostgreSQL use pg_dump)")
    path = path.expanduser().absolute()
    if must_exist and not path.is_file():
        raise DatabaseUnavailable(str(path), "no such file")
    return path


def _revision(conn: sqlite3.Connection) -> str | None:
    try:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return str(rows[0][0]) if rows else None


def _check_lines(conn: sqlite3.Connection, mode: str) -> Iterator[str]:
    """Each problem line (SQLite may put several in one row), or just "ok"."""
    for (text,) in conn.execute(f"PRAGMA {mode}({MAX_REPORTED})").fetchall():
        yield from (line for line in str(text).splitlines()
                    if line.strip() and not line.startswith("*** in database"))


def _torn_tail(conn: sqlite3.Connection, path: Path) -> list[str]:
    """SQLite writes its file in whole pages, so a size that is not a multiple of the page
    size means a torn write or a truncation. The checks above cannot see it (the cut part of
    the last page simply reads as zeros), yet it may have lost stored bytes."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    size = path.stat().st_size if path.exists() else 0
    if size % page_size == 0:
        return []
    return [f"the file ends inside a page ({size} bytes is not a whole number of "
            f"{page_size}-byte pages): a write was torn or the file was cut, and the end of "
            "its last page reads back as zeros"]


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name")]
    quoted = {name: '"' + name.replace('"', '""') + '"' for name in names}
    return {name: int(conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0])
            for name, q in quoted.items()}


def _make_private_dir(directory: Path) -> None:
    try:
        make_private_dirs(directory)
    except OSError as exc:
        raise StoreError(f"cannot create directory {directory}: {exc.strerror}") from exc


def _create_private(path: Path) -> None:
    """Create an empty file readable by its owner only (task output may hold secrets)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a leftover of a crashed backup by a process with our pid
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc.strerror}") from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
