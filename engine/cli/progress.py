"""How a transfer is followed: a bar on a terminal, one JSON line a second on stderr
(`--progress json`, whatever stderr is), and a status line on SIGUSR1 (as `dd` does).

The display reads a `Tracker` (engine/cli/status.py) from a thread of its own; nothing here
is called per packet. The SIGUSR1 handler is installed for the whole command (main()), so
that the signal never kills a command and leaves its forkserver behind; it prints whatever
display is current, or what the command is doing before there is one.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from engine import log
from engine.cli.status import Status, Tracker
from engine.units import format_rate

MODES = ("auto", "bar", "json", "none")
JSON_INTERVAL_S = 1.0
BAR_INTERVAL_S = 0.2

# What SIGUSR1 prints: the status of the transfer being shown, if any.
_current: list[Callable[[], Status]] = []


def print_status(signum: int = 0, frame: Any = None) -> None:
    """The SIGUSR1 handler: one line on stderr, at any verbosity (it was asked for)."""
    line = _current[-1]().line() if _current else "no transfer under way"
    try:  # through sys.stderr: a bar on the terminal puts the line above itself
        print(f"multifd: {line}", file=sys.stderr, flush=True)
    except RuntimeError:  # the signal came in the middle of a write to stderr
        os.write(2, f"multifd: {line}\n".encode())


def resolve(mode: str) -> str:
    """`auto`: the bar on a terminal (unless -q), nothing otherwise."""
    if mode != "auto":
        return mode
    return "bar" if sys.stderr.isatty() and log.verbosity() > log.QUIET else "none"


@contextmanager
def following(tracker: Tracker, mode: str, label: str) -> Iterator[Tracker]:
    """Show `tracker` the `mode` way while the block runs; SIGUSR1 prints it meanwhile."""
    _current.append(tracker.status)
    stop = threading.Event()
    show = {"bar": _bar, "json": _json_lines}.get(resolve(mode))
    thread = None
    try:
        if show is not None:
            thread = threading.Thread(target=show, args=(tracker, label, stop),
                                      name="multifd-progress", daemon=True)
            thread.start()
        yield tracker
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        _current.remove(tracker.status)


def _json_lines(tracker: Tracker, label: str, stop: threading.Event) -> None:
    while not stop.wait(JSON_INTERVAL_S):
        print(json.dumps(tracker.status().to_json(), sort_keys=True), file=sys.stderr,
              flush=True)


def _bar(tracker: Tracker, label: str, stop: threading.Event) -> None:
    # rich is imported only for a terminal: --json runs and pipes start faster without it.
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
    while tracker.phase == "listening":  # no bar before there is a transfer
        if stop.wait(BAR_INTERVAL_S):
            return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               TextColumn("{task.fields[rates]}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=max(tracker.image_size, 1), rates="")
        stopped = False
        while not stopped:
            stopped = stop.wait(BAR_INTERVAL_S)  # then once more: how it ended
            status = tracker.status()
            bar.update(task, completed=min(status.image_bytes, status.image_size),
                       total=max(status.image_size, 1),
                       description=f"{label} (round {status.round})" if status.round else label,
                       rates=_rates(status))
            bar.refresh()


def _rates(status: Status) -> str:
    """The bar's text: both rates, and the time left."""
    text = f"{format_rate(status.image_rate)} image"
    if status.wire_rate is not None:
        text += f", {format_rate(status.wire_rate)} wire"
    if status.seconds_left is not None:
        text += f", {status.seconds_left:.0f} s left"
    return text
