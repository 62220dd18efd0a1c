"""The ``oneshot`` command: a thin synchronous shell over the async core.

Exit codes: ``run`` exits with the task's code (128+N when killed by signal N, 124 when stopped
by a timeout, 127 when the command was not found, 126 when it could not be executed);
otherwise 0 on success, 1 for a missing task, a failed check or a database problem, 2 for bad
usage or configuration.
"""

from orchestrator.cli import admin, backup, prune, query, run, ui, workers
from orchestrator.cli.app import cli

__all__ = ["admin", "backup", "cli", "main", "prune", "query", "run", "ui", "workers"]


def main() -> None:
    cli(prog_name="oneshot")
