"""A progress bar on stderr (bytes, rate, ETA) when stderr is a terminal (and not -q),
silence otherwise."""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from engine import log
from engine.units import format_rate


@contextmanager
def progress_bar(total: int, label: str, enabled: bool | None = None
                 ) -> Iterator[Callable[[int], None] | None]:
    """Yield an `advance(nbytes)` callback (thread-safe), or None when not shown (by
    default: shown on a terminal, unless -q)."""
    if enabled is None:
        enabled = sys.stderr.isatty() and log.verbosity() > log.QUIET
    if not enabled or total <= 0:
        yield None
        return
    # rich is imported only for a terminal: --json runs and pipes start faster without it.
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn)
    console = Console(stderr=True)
    # The rate in the units of the sizes (MiB/s; rich's own speed column says MB/s).
    rate = TextColumn("{task.fields[rate]}")
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               rate, TimeRemainingColumn())
    lock = threading.Lock()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total, rate="")

        def advance(nbytes: int) -> None:
            with lock:
                bar.advance(task, nbytes)
                speed = bar.tasks[task].speed
                bar.update(task, rate=f"{format_rate(speed)} image" if speed else "")

        yield advance
