"""The forkserver that worker processes are forked from, started once per coordinator process.

It imports the worker code (numpy, zmq, zstandard) once, so starting a worker costs a fork.
`python -m engine` starts it first thing, so that those imports run on the other core while
the command imports the coordinators (BENCHMARKS.md, "start-up"); WorkerGroup starts it for
API users. It runs with OPENBLAS_NUM_THREADS=1: the workers never use BLAS, and otherwise
OpenBLAS starts a thread per core in every worker that spins at start-up, which cost 6% of a
1 GiB transfer's CPU (BENCHMARKS.md, "profile").

Workers never re-import the caller's `__main__`: multiprocessing would, in every new child,
so a script that calls `engine.migrate` without an `if __name__ == "__main__":` guard would
start its own transfer again in each worker. A worker runs `workers.main.run_worker`, which
needs nothing from the caller's script.
"""
from __future__ import annotations

import io
import multiprocessing.context
import multiprocessing.forkserver
import os
from multiprocessing import popen_forkserver, reduction, spawn, util
from typing import Any

from engine import log

# The built-in handlers and codecs too: the registries import them by name on first use,
# which without this happened in every new worker (zstandard alone is tens of ms).
PRELOAD = ["workers.main", "workers.handlers.ram", "workers.handlers.device",
           "workers.codecs.plain", "workers.codecs.zlib", "workers.codecs.zstd",
           "engine.coordinator.quick_exit"]
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


# What multiprocessing's preparation data holds to re-import the parent's __main__ in a child.
_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")


class _Popen(popen_forkserver.Popen):
    """multiprocessing's forkserver launch (Python 3.11's `_launch`, which has no hook for
    this), minus the keys that make the child import the parent's `__main__`."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in _MAIN_KEYS:
            prep_data.pop(key, None)
        buf = io.BytesIO()
        multiprocessing.context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            multiprocessing.context.set_spawning_popen(None)
        forkserver = multiprocessing.forkserver
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        # A duplicate of the data pipe's write end: the child's sentinel of its parent.
        parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class WorkerProcess(multiprocessing.context.ForkServerProcess):
    """A process forked from the forkserver that does not re-import the caller's script and
    speaks at the verbosity its coordinator had when it started it (-q, -v): the forkserver
    itself started before the command line was read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._verbosity = log.verbosity()  # pickled with the process object

    def run(self) -> None:
        log.set_verbosity(self._verbosity)
        super().run()

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)
