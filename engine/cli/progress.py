"""A progress bar on stderr (bytes, rate, ETA) when stderr is a terminal, silence otherwise."""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(total: int, label: str, enabled: bool | None = None
                 ) -> Iterator[Callable[[int], None] | None]:
    """Yield an `advance(nbytes)` callback (thread-safe), or None when not shown."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled or total <= 0:
        yield None
        return
    # rich is imported only for a terminal: --json runs and pipes start faster without it.
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               TransferSpeedColumn(), TimeRemainingColumn())
    lock = threading.Lock()
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=total)

        def advance(nbytes: int) -> None:
            with lock:
                bar.advance(task, nbytes)

        yield advance
