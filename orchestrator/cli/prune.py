"""Retention from the command line: prune, db vacuum, and the worker's periodic prune."""

from __future__ import annotations

import click
from rich.table import Table

from config import OneshotSettings
from durable.engine import ConnectionOptions
from durable.exceptions import OneshotError
from durable.persistence import PersistenceManager
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
        if not isinstance(store, PersistenceManager):  # pragma: no cover - persistence is on
            fail("prune works on a SQL store", 2)
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
    """Rewrite the database without free pages (full VACUUM) and turn on incremental
    auto-vacuum, so later prunes give space back by themselves."""
    settings = obj.settings()
    options = ConnectionOptions(url=settings.database.url,
                                synchronous=settings.database.synchronous,
                                busy_timeout_ms=settings.database.busy_timeout_ms)
    path = options.sqlite_path
    if path is None:
        fail("db vacuum works on a SQLite database", 2)
        return
    if not path.is_file():
        fail(f"no database at {path}")
    with ProgressBar("Vacuuming"):
        sizes = await vacuum_database(options)
    err_console.print(f"oneshot: vacuumed {path}: {_size(sizes.before)} -> {_size(sizes.after)}",
                      highlight=False)


def retention_jobs(orch: AsyncOrchestrator) -> list[PeriodicJob]:
    """The worker's periodic prune (every ``retention.interval`` seconds), for a SQL store."""
    store, settings = orch.store, orch.settings
    if not isinstance(store, PersistenceManager):
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
