"""Retention from the command line: prune, db vacuum, and the worker's periodic prune.

The same on SQLite and PostgreSQL; only how space is given back differs (see
:mod:`durable.retention_sqlite` and :mod:`durable.retention_postgres`).
"""

from __future__ import annotations

import click
from rich.table import Table

from config import OneshotSettings
from durable.engine import ConnectionOptions
from durable.exceptions import OneshotError
from durable.persistence import PersistenceManager
from durable.postgres import PostgresStore
from durable.retention import AGE, TASK_BYTES, TOTAL_BYTES, PruneReport, RetentionPolicy
from durable.retention import prune as prune_store
from durable.retention import vacuum as vacuum_database
from orchestrator.cli.admin import db
from orchestrator.cli.app import (
    Context,
    async_command,
    cli,
    console,
    err_console,
    fail,
    open_store,
    pass_context,
    persistent_settings,
)
from orchestrator.orchestrator import AsyncOrchestrator
from orchestrator.progress import ProgressBar
from orchestrator.worker import PeriodicJob


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would be pruned; delete nothing.")
@pass_context
@async_command
async def prune(obj: Context, dry_run: bool) -> None:
    """Apply the retention policies now (settings `retention.*`) and give the space back."""
    settings = persistent_settings(obj, "prune")
    store = await open_store(settings)
    try:
        if not isinstance(store, PersistenceManager | PostgresStore):  # pragma: no cover
            fail("prune works on a SQL store", 2)  # persistence is on: never in memory
            return
        policy = RetentionPolicy.from_settings(settings.retention)
        with ProgressBar("Pruning", unit="rows") as bar:
            report = await prune_store(
                store, policy, dry_run=dry_run,
                on_chunk=lambda r: bar.update(r.tasks_deleted + r.fragments_deleted))
    finally:
        await store.close()
    console.print(report_table(report, settings))
    err_console.print(f"oneshot: {summary(report)}", highlight=False, soft_wrap=True)


@db.command(name="vacuum")
@pass_context
@async_command
async def vacuum(obj: Context) -> None:
    """Give the space of deleted rows back. SQLite: rewrite the file without free pages (a
    full VACUUM) and turn on incremental auto-vacuum, so later prunes shrink it by themselves.
    PostgreSQL: a plain VACUUM (ANALYZE) of Oneshot's tables (space reusable and statistics
    fresh now; the files seldom shrink; no VACUUM FULL)."""
    options = ConnectionOptions.from_settings(obj.settings().database)
    if options.is_postgresql:
        with ProgressBar("Vacuuming"):
            sizes = await vacuum_database(options)
        schema = "" if options.schema is None else f" (schema {options.schema})"
        err_console.print(
            f"oneshot: ran VACUUM (ANALYZE) on Oneshot's tables in {options.display_url}"
            f"{schema}: {_size(sizes.before)} before, {_size(sizes.after)} after (with indexes);"
            " the space of deleted rows is reusable by new rows now (PostgreSQL seldom shrinks"
            " its files; autovacuum does this on its own too)",
            highlight=False, markup=False, soft_wrap=True)
        return
    path = options.sqlite_path
    if path is None:
        fail("db vacuum works on a SQLite or PostgreSQL database", 2)
        return
    if not path.is_file():
        fail(f"no database at {path}")
    with ProgressBar("Vacuuming"):
        sizes = await vacuum_database(options)
    err_console.print(f"oneshot: vacuumed {path}: {_size(sizes.before)} -> {_size(sizes.after)}",
                      highlight=False)


def retention_jobs(orch: AsyncOrchestrator) -> list[PeriodicJob]:
    """The worker's periodic prune (every ``retention.interval`` seconds), for a SQL store
    (SQLite or PostgreSQL; on PostgreSQL every worker runs it, and their chunks take turns)."""
    store, settings = orch.store, orch.settings
    if not isinstance(store, PersistenceManager | PostgresStore):
        return []
    policy = RetentionPolicy.from_settings(settings.retention)

    async def run() -> None:
        try:
            report = await prune_store(store, policy)
        except OneshotError as exc:  # the worker keeps running; the next interval retries
            err_console.print(f"oneshot: prune failed: {exc}", highlight=False, markup=False)
            return
        if report.chunks:
            err_console.print(f"oneshot: {summary(report)}", highlight=False, soft_wrap=True)

    return [PeriodicJob("retention", settings.retention.interval, run)]


def report_table(report: PruneReport, settings: OneshotSettings) -> Table:
    retention = settings.retention
    limits = {AGE: _limit(retention.max_age_days, " days"),
              TASK_BYTES: _limit(retention.max_bytes_per_task, " bytes"),
              TOTAL_BYTES: _limit(retention.max_total_bytes, " bytes")}
    verb = "would delete (dry run)" if report.dry_run else "deleted"
    table = Table(title=f"retention {verb}, keep_last {retention.keep_last}", box=None,
                  header_style="bold", title_justify="left")
    table.add_column("RULE")
    table.add_column("LIMIT")
    for column in ("TASKS", "TRUNCATED", "FRAGMENTS", "BYTES"):
        table.add_column(column, justify="right")
    for rule, count in report.rules.items():
        table.add_row(rule, limits[rule], str(count.tasks), str(count.truncated),
                      str(count.fragments), str(count.bytes))
    table.add_row("total", "", str(report.tasks_deleted),
                  str(sum(c.truncated for c in report.rules.values())),
                  str(report.fragments_deleted), str(report.bytes_freed), style="bold")
    return table


def summary(report: PruneReport) -> str:
    if report.dry_run:
        return "dry run: nothing was deleted"
    text = (f"pruned {report.tasks_deleted} tasks, {report.fragments_deleted} fragments, "
            f"{_size(report.bytes_freed)} of output in {report.chunks} chunks "
            f"(longest {report.longest_chunk * 1000:.0f} ms)")
    if report.space in ("incremental", "vacuumed"):
        text += f"; the file gave back {_size(report.bytes_released)}"
    elif report.space == "needs vacuum":
        text += "; run `oneshot db vacuum` to shrink the file"
    elif report.space == "autovacuum":
        text += ("; 0 bytes given back now: PostgreSQL's autovacuum makes the space reusable "
                 "(the files keep their size)")
    return text


def _limit(value: float | int | None, unit: str) -> str:
    return "none" if value is None else f"{value:g}{unit}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
