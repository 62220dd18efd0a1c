"""A progress bar for long operations (backup, prune, vacuum, log export).

On a terminal it draws a rich progress bar on stderr; when stderr is not a terminal (a pipe, a
file, a test) it draws nothing at all, so scripts and logs never see control sequences.
``FORCE_TERMINAL`` / ``NO_COLOR`` and the other variables rich honours apply.

Usage::

    with ProgressBar("Backing up", total=pages, unit="pages") as bar:
        for chunk in work:
            ...
            bar.advance(len(chunk))      # or bar.update(done, total=new_total)

``update`` and ``advance`` may be called from any thread (e.g. a callback of a blocking call
run with ``anyio.to_thread``).
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressBar", "stderr_is_terminal"]

_STDERR = Console(stderr=True)


def stderr_is_terminal(console: Console | None = None) -> bool:
    """Whether progress would be drawn: stderr (or ``console``) is an interactive terminal."""
    console = console or _STDERR
    return console.is_terminal and not console.is_dumb_terminal


class ProgressBar:
    """A context manager drawing one progress bar on a terminal; a no-op otherwise.

    ``total=None`` shows a spinner until a total is known (``update(done, total=...)``).
    ``enabled`` forces the decision (``None``: draw only when stderr is a terminal).
    The bar is removed when the block ends; print a summary line afterwards if wanted.
    """

    def __init__(
        self,
        description: str,
        *,
        total: float | None = None,
        unit: str = "",
        console: Console | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.description = description
        console = console or _STDERR
        self.enabled = stderr_is_terminal(console) if enabled is None else enabled
        self._total = total
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.enabled:
            columns: list[ProgressColumn] = [
                SpinnerColumn(),
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
            ]
            if unit:
                columns.append(TextColumn(unit))
            columns += [TimeElapsedColumn(), TimeRemainingColumn()]
            self._progress = Progress(*columns, console=console, transient=True)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self._total)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, completed: float, *, total: float | None = None) -> None:
        """Set how much is done (and, when it becomes known or changes, the total)."""
        if self._progress is not None and self._task is not None:
            if total is None:
                self._progress.update(self._task, completed=completed)
            else:
                self._progress.update(self._task, completed=completed, total=total)

    def advance(self, amount: float = 1) -> None:
        """Add ``amount`` to what is done."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)
