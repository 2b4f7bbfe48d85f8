"""The forkserver that worker processes are forked from, started once per coordinator process.

It holds the worker code (numpy, zmq, zstandard) imported, so starting a worker costs a fork.
The command line forks it from itself (start_here); WorkerGroup starts it as an interpreter
of its own for API users (start), which imports that code first. It runs with OPENBLAS_NUM_THREADS=1: the workers never use BLAS, and otherwise
OpenBLAS starts a thread per core in every worker that spins at start-up, which cost 6% of a
1 GiB transfer's CPU (BENCHMARKS.md, "profile").

Workers never re-import the caller's `__main__`: multiprocessing would, in every new child,
so a script that calls `engine.migrate` without an `if __name__ == "__main__":` guard would
start its own transfer again in each worker. A worker runs `workers.main.run_worker`, which
needs nothing from the caller's script.
"""
from __future__ import annotations

import importlib
import io
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
import socket
from multiprocessing import connection, popen_forkserver, reduction, resource_tracker, spawn, util
from typing import Any

from engine import log

# The built-in handlers and codecs too: the registries import them by name on first use,
# which without this happened in every new worker (zstandard alone is tens of ms).
WORKER_MODULES = ["workers.main", "workers.handlers.ram", "workers.handlers.device",
                  "workers.codecs.plain", "workers.codecs.zlib", "workers.codecs.zstd"]
PRELOAD = [*WORKER_MODULES, "engine.coordinator.quick_exit"]
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


def start_here() -> None:
    """Start the forkserver as a fork of this process, which must have imported PRELOAD
    already and have no thread and no ZeroMQ context yet (the command line, first thing):
    no second interpreter starts and imports numpy, zmq and zstandard all over again, which
    cost a command 0.2 s of CPU, and a worker can be forked as soon as the command wants one.
    API callers get start(): their process may run threads, which a fork does not carry."""
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_pid is not None:
        return
    for name in WORKER_MODULES:
        importlib.import_module(name)
    resource_tracker.ensure_running()
    listener = socket.socket(socket.AF_UNIX)
    address = connection.arbitrary_address("AF_UNIX")
    listener.bind(address)
    if not util.is_abstract_socket_namespace(address):
        os.chmod(address, 0o600)
    listener.listen()
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forkserver: it serves until its coordinator closes alive_w
        try:
            os.close(alive_w)
            for signum in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(signum, signal.SIG_DFL)  # the command's handlers are not ours
            multiprocessing.forkserver.main(listener.fileno(), alive_r, PRELOAD)
        finally:
            os._exit(0)
    os.close(alive_r)
    listener.close()
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid


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
