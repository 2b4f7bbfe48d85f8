"""`python -m engine ...`: the same as the `multifd` command.

The worker forkserver is started first thing, so that its imports (numpy, zmq, zstandard)
run on the other core while this process imports the engine: start-up is paid once, not
twice in a row (BENCHMARKS.md, "start-up").
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see engine/coordinator/forkserver.py: no BLAS here

from engine.coordinator import forkserver  # noqa: E402

forkserver.start()

from engine.cli.commands import console_main  # noqa: E402  (after the forkserver on purpose)

console_main()
