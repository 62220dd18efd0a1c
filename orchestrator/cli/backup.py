"""Backups: `oneshot db backup PATH`, the worker's periodic backup, and `db check --repair`."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import click

from config import OneshotSettings
from durable import backup, migrate
from durable.engine import ConnectionOptions, create_null_pool_engine
from durable.exceptions import StoreError
from orchestrator.cli.admin import _connection_options, db
from orchestrator.cli.app import Context, async_command, err_console, fail, pass_context
from orchestrator.progress import ProgressBar
from orchestrator.worker import PeriodicJob

SHOWN_PROBLEMS = 20


@db.command(name="backup")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
@click.option("--no-verify", is_flag=True,
              help="Skip integrity_check and the row-count comparison of the copy.")
@pass_context
@async_command
async def backup_command(obj: Context, path: Path, force: bool, no_verify: bool) -> None:
    """Copy the SQLite database to PATH, consistently, while tasks keep running.

    PATH may be an existing directory: the copy is then named oneshot-YYYYmmdd-HHMMSS.db
    (UTC) inside it. The copy is created owner-only (0600) and is a single file.
    """
    options = _connection_options(obj.settings())
    if path.is_dir():
        path = path / backup.backup_name()
    with ProgressBar("Backing up", unit="pages") as bar:
        result = await anyio.to_thread.run_sync(lambda: backup.backup_sqlite(
            options, path, overwrite=force, verify=not no_verify,
            progress=lambda done, total: bar.update(done, total=total)))
    checked = "" if no_verify else "; integrity_check ok; rows: " + ", ".join(
        f"{name} {count}" for name, count in result.counts.items() if name != "alembic_version")
    err_console.print(f"oneshot: backed up {result.pages} pages ({_size(result.size)}) in "
                      f"{result.seconds:.1f} s{checked}", highlight=False, markup=False,
                      soft_wrap=True)
    click.echo(str(result.path))


def periodic_backup_jobs(settings: OneshotSettings) -> list[PeriodicJob]:
    """The worker's backup job, if ``backup.interval_hours`` is set (else none)."""
    interval = settings.backup.interval_hours
    if interval is None or not settings.persistence.enabled:
        return []
    options = _connection_options(settings)
    if options.sqlite_path is None:
        return []
    directory = settings.backup.directory or backup.default_backup_directory(options)
    keep = settings.backup.keep

    async def run() -> None:
        try:
            result, removed = await anyio.to_thread.run_sync(
                backup.periodic_backup, options, directory, keep)
        except (StoreError, OSError) as exc:
            # A failed backup must not stop the worker; it is tried again next interval.
            err_console.print(f"oneshot: periodic backup failed: {exc}", highlight=False,
                              markup=False, soft_wrap=True)
            return
        err_console.print(f"oneshot: backup {result.path} ({_size(result.size)}); "
                          f"removed {len(removed)} old", highlight=False, markup=False,
                          soft_wrap=True)

    return [PeriodicJob("backup", interval * 3600.0, run)]


async def check_sqlite(settings: OneshotSettings, *, integrity: bool, repair: bool,
                       force: bool) -> None:
    """`db check` on SQLite: print the report; with ``repair``, act on it."""
    if force and not repair:
        fail("--force goes with --repair", 2)
    options = _connection_options(settings)
    with ProgressBar(f"Running {'integrity_check' if integrity else 'quick_check'}"):
        report = await anyio.to_thread.run_sync(
            functools.partial(backup.inspect_sqlite, options, full=integrity))
    click.echo(f"database:     {report.path}")
    click.echo(f"revision:     {report.revision or 'none'} (head {migrate.HEAD})")
    label = f"{report.mode}: ".ljust(14)
    if report.unreadable:
        click.echo(f"{label}not a usable SQLite database ({report.unreadable})")
    elif report.problems:
        click.echo(f"{label}{len(report.problems)} problems")
        for line in report.problems[:SHOWN_PROBLEMS]:
            click.echo(f"  {line}")
        if len(report.problems) > SHOWN_PROBLEMS:
            click.echo(f"  ... {len(report.problems) - SHOWN_PROBLEMS} more")
    else:
        click.echo(f"{label}ok")
    if report.foreign_key_problems is not None:
        click.echo(f"foreign keys: {report.foreign_key_problems} problems")
    if repair:
        await _repair(options, report, force)
    elif report.unreadable:
        fail(f"database {report.path}: not a usable SQLite database ({report.unreadable}); "
             "`oneshot db check --repair` moves it aside and starts a fresh one")
    elif report.damaged:
        fail(f"database {report.path} is damaged ({report.mode} or foreign keys above); "
             "`oneshot db check --repair` moves it aside and starts a fresh one")
    elif report.revision != migrate.HEAD:
        fail("database check failed: run `oneshot db upgrade`")


async def _repair(options: ConnectionOptions, report: backup.IntegrityReport,
                  force: bool) -> None:
    """Move a damaged database aside (kept, with its -wal/-shm) and start a fresh one."""
    path = report.path
    if not report.damaged and not force:
        upgrade = "" if report.revision == migrate.HEAD else "; run `oneshot db upgrade`"
        fail(f"database {path} passed {report.mode}: nothing to repair (--repair --force "
             f"moves it aside anyway){upgrade}")
    holder = backup.in_use_by(path)
    if holder is not None:
        fail(f"database {path} is in use by process {holder}: stop it before --repair")
    moved = await anyio.to_thread.run_sync(backup.move_aside, path) if path.exists() else []
    engine = create_null_pool_engine(options)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    if moved:
        click.echo(f"moved aside:  {', '.join(str(p) for p in moved)}")
    click.echo(f"fresh:        {path} (revision {migrate.HEAD})")
    kept = f"kept at {moved[0]}" if moved else "was missing"
    err_console.print(f"oneshot: the old database is {kept}; a fresh database is at {path}",
                      highlight=False, markup=False, soft_wrap=True)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
