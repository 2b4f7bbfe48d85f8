"""One-line notices on stderr: what the engine did about a fault it recovered from."""
from __future__ import annotations

import sys


def warn(message: str) -> None:
    print(f"multifd: {message}", file=sys.stderr, flush=True)
