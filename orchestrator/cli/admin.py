"""Settings and database maintenance: config, db upgrade|check."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from config import OneshotSettings, describe_settings
from durable import migrate
from durable.engine import ConnectionOptions, create_null_pool_engine, unsupported_options_refused
from orchestrator.cli.app import (
    Context,
    async_command,
    cli,
    console,
    err_console,
    fail,
    pass_context,
)

T = TypeVar("T")


@cli.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_context
def show_config(obj: Context, as_json: bool) -> None:
    """Print the effective settings and where each value came from (secrets masked)."""
    lines = describe_settings(obj.settings())
    if as_json:
        click.echo(json.dumps({line.key: {"value": line.value, "source": line.source}
                               for line in lines}, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("SETTING", "VALUE", "SOURCE"):
        table.add_column(column)
    for line in lines:
        table.add_row(line.key, line.value, line.source)
    console.print(table)


@cli.group()
def db() -> None:
    """Database maintenance: upgrade, check, backup."""


def _connection_options(settings: OneshotSettings) -> ConnectionOptions:
    return ConnectionOptions.from_settings(settings.database)


async def _with_engine(settings: OneshotSettings, action: Callable[[Any], Awaitable[T]]) -> T:
    options = _connection_options(settings)
    engine = create_null_pool_engine(options)
    try:
        with unsupported_options_refused(options):
            return await action(engine)
    finally:
        await engine.dispose()


@db.command()
@pass_context
@async_command
async def upgrade(obj: Context) -> None:
    """Migrate the database to the newest schema."""
    settings = obj.settings()
    schema = settings.database.schema_
    await _with_engine(settings, lambda engine: migrate.upgrade(engine, schema=schema))
    err_console.print(f"oneshot: {settings.database.url} is at revision "
                      f"{migrate.head_revision()}", highlight=False)


@db.command()
@click.option("--integrity", is_flag=True,
              help="Run the full integrity_check (reads every page) instead of quick_check.")
@click.option("--repair", is_flag=True,
              help="If the database is damaged: move it aside (kept) and start a fresh one.")
@click.option("--force", is_flag=True, help="With --repair: move it aside even if it is fine.")
@pass_context
@async_command
async def check(obj: Context, integrity: bool, repair: bool, force: bool) -> None:
    """Report the schema revision, SQLite's quick_check (or integrity_check) and foreign keys;
    exit 1 if anything is wrong."""
    settings = obj.settings()
    if _connection_options(settings).is_sqlite:
        from orchestrator.cli.backup import check_sqlite  # backup imports this module

        await check_sqlite(settings, integrity=integrity, repair=repair, force=force)
        return
    if integrity or repair:
        fail("--integrity and --repair work on SQLite databases only", 2)
    result = await _with_engine(settings, migrate.check)
    click.echo(f"database:     {settings.database.url}")
    click.echo(f"revision:     {result.current or 'none'} (head {result.head})")
    if result.quick_check is not None:
        click.echo(f"quick_check:  {'; '.join(result.quick_check)}")
    if result.foreign_key_problems is not None:
        click.echo(f"foreign keys: {result.foreign_key_problems} problems")
    if not result.healthy:
        fail("database check failed" + ("" if result.up_to_date else
                                         ": run `oneshot db upgrade`"))


