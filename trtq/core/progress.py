"""A progress bar on stderr for long steps (rich), silent when disabled."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class ProgressBar:
    """``advance(n)`` moves the bar and shows the rate in ``unit``/s; a no-op when disabled."""

    def __init__(self, progress: Progress | None, unit: str) -> None:
        self._progress = progress
        self._unit = unit
        self._task = None

    def advance(self, n: int = 1) -> None:
        if self._progress is None:
            return
        self._progress.advance(self._task, n)
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, rate=f"{speed:.1f} {self._unit}/s" if speed else "")

    def remaining(self, n: int) -> None:
        """Re-estimate: ``n`` more steps from here."""
        if self._progress is not None:
            task = self._progress.tasks[0]
            self._progress.update(self._task, total=task.completed + n)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "samples",
                 enabled: bool = True) -> Iterator[ProgressBar]:
    if not enabled:
        yield ProgressBar(None, unit)
        return
    # With a known total: done/total, the rate and the time left (ETA) after the time spent.
    counted = (MofNCompleteColumn(),) if total is not None else ()
    remaining = (TextColumn("ETA"), TimeRemainingColumn()) if total is not None else ()
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), *counted,
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), *remaining, console=Console(stderr=True),
    )
    bar = ProgressBar(progress, unit)
    with progress:
        bar._task = progress.add_task(description, total=total, rate="")
        yield bar
