"""The engine's load tester, `python -m engine bench`: synthetic images, a matrix of cells
run in interleaved repeats, each compared with ceilings measured in the same run (the raw
wire, the work floor), soak runs, and runs across a shaped link between network namespaces.
"""
from __future__ import annotations

from engine.tools.bench.options import add_arguments


def run(args) -> int:
    """Run the benchmark the parsed `args` describe; the exit code (1 if a transfer failed)."""
    from engine.tools.bench.command import run as run_command  # heavy imports only when used
    return run_command(args)


__all__ = ["add_arguments", "run"]
