"""Lines on stderr besides errors, at the verbosity the command line chose (-q, -v).

QUIET (-q) leaves only errors (engine/cli/failure.py prints those); NORMAL adds notices
(listening on, connecting to, a fault the engine recovered from); VERBOSE (-v) adds each
channel's events: workers started, connections, reconnects, replays, rounds released.
Worker processes speak at their coordinator's verbosity (engine/coordinator/forkserver.py).
"""
from __future__ import annotations

import sys

QUIET, NORMAL, VERBOSE = 0, 1, 2
_verbosity = NORMAL


def set_verbosity(level: int) -> None:
    global _verbosity
    _verbosity = level


def verbosity() -> int:
    return _verbosity


def notice(message: str) -> None:
    """What is going on, or what the engine did about a fault it recovered from."""
    _say(NORMAL, message)


# The name workers/ and the coordinators call it by, for the faults they recovered from.
warn = notice


def detail(message: str) -> None:
    """A channel's event, for -v."""
    _say(VERBOSE, message)


def _say(level: int, message: str) -> None:
    if _verbosity >= level:
        print(f"multifd: {message}", file=sys.stderr, flush=True)
