"""The forkserver that worker processes are forked from, started once per coordinator process.

It imports the worker code (numpy, zmq, zstandard) once, so starting a worker costs a fork.
`python -m engine` starts it first thing, so that those imports run on the other core while
the command imports the coordinators (BENCHMARKS.md, "start-up"); WorkerGroup starts it for
API users. It runs with OPENBLAS_NUM_THREADS=1: the workers never use BLAS, and otherwise
OpenBLAS starts a thread per core in every worker that spins at start-up, which cost 6% of a
1 GiB transfer's CPU (BENCHMARKS.md, "profile").
"""
from __future__ import annotations

import multiprocessing.forkserver
import os

# The built-in handlers and codecs too: the registries import them by name on first use,
# which without this happened in every new worker (zstandard alone is tens of ms).
PRELOAD = ["workers.main", "workers.handlers.ram", "workers.handlers.device",
           "workers.codecs.plain", "workers.codecs.zlib", "workers.codecs.zstd"]
_QUIET_ENV = {"OPENBLAS_NUM_THREADS": "1"}


def start() -> None:
    """Start the forkserver unless it runs already (cheap to call again)."""
    multiprocessing.forkserver.set_forkserver_preload(PRELOAD)
    saved = {name: os.environ.get(name) for name in _QUIET_ENV}
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def stop() -> None:
    """Stop the forkserver and multiprocessing's resource tracker, if they run: a command
    that returned must leave no process of its own (by themselves they linger up to 2 s).
    Both stop methods are private to multiprocessing; without them they end on their own."""
    import multiprocessing.resource_tracker
    for helper in (multiprocessing.forkserver._forkserver,
                   multiprocessing.resource_tracker._resource_tracker):
        stop_helper = getattr(helper, "_stop", None)
        if stop_helper is not None:
            stop_helper()
