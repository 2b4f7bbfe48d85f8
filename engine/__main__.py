"""`python -m engine ...`: the same as the `multifd` command.

The command imports what its workers need, then forks the worker forkserver from itself
before it starts any thread (forkserver.start_here): the forkserver needs no interpreter and
no imports of its own (BENCHMARKS.md, "start-up").
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see engine/coordinator/forkserver.py: no BLAS here

from engine.cli.commands import console_main  # noqa: E402
from engine.coordinator import forkserver  # noqa: E402

forkserver.start_here()
console_main()
