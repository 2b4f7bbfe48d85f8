"""`python -m engine ...`: the same as the `multifd` command.

The worker forkserver is started first thing, so that its imports (numpy, zmq, zstandard)
run on the other core while this process imports the engine: start-up is paid once, not
twice in a row (BENCHMARKS.md, "start-up").
"""
import multiprocessing.forkserver
import sys

multiprocessing.forkserver.set_forkserver_preload(["workers.main"])
multiprocessing.forkserver.ensure_running()

from engine.cli import main  # noqa: E402  (after the forkserver on purpose)

sys.exit(main())
