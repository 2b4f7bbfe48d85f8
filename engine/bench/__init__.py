"""The engine's load tester, `python -m engine bench`: synthetic images, a matrix of cells
run in interleaved repeats, each compared with ceilings measured in the same run (the raw
wire, the work floor), soak runs, and runs across a shaped link between network namespaces.
"""
from __future__ import annotations

from engine.bench.command import add_arguments, run

__all__ = ["add_arguments", "run"]
