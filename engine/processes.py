"""Starting, watching and stopping a coordinator's worker processes.

Workers come from a forkserver that has already imported the worker code (numpy, zmq,
zstandard), so starting four of them costs milliseconds, not a fresh interpreter each.
Each worker gets its own IPC socket to the coordinator in a private folder. Stopping is
always bounded: ask, wait, then kill, so no process outlives the coordinator.
"""
from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Any, Callable

import zmq

from engine import forkserver
from engine.errors import PeerLost, error_named
from engine.framing import decode, encode
from engine.jobs import Failure, Stats, Stop, WorkerConfig
import workers.main as worker_main  # module import: workers.main imports engine too

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 2.0

_context = multiprocessing.get_context("forkserver")


class WorkerGroup:
    """One worker per channel, each with a PAIR socket owned by the calling thread."""

    def __init__(self, zmq_context: zmq.Context, template: WorkerConfig, channels: int) -> None:
        self.folder = tempfile.mkdtemp(prefix="multifd-")
        self.sockets: list[zmq.Socket] = []
        self.processes: list[Any] = []
        self.stats: list[dict[str, float]] = [{} for _ in range(channels)]
        forkserver.start()
        try:
            for channel in range(channels):
                socket = zmq_context.socket(zmq.PAIR)
                socket.linger = 0
                endpoint = f"ipc://{self.folder}/w{channel}"
                socket.bind(endpoint)
                self.sockets.append(socket)
                config = replace(template, channel=channel, control=endpoint)
                process = _context.Process(target=worker_main.run_worker, args=(config,),
                                           name=f"multifd-{template.side}-{channel}",
                                           daemon=True)
                process.start()
                self.processes.append(process)
        except BaseException:
            self.close()
            raise

    def send(self, channel: int, msg: Any) -> None:
        self.sockets[channel].send(encode(msg))

    def broadcast(self, msg: Any) -> None:
        for channel in range(len(self.sockets)):
            self.send(channel, msg)

    def receive(self, channel: int) -> Any:
        return decode(self.sockets[channel].recv())

    def gather(self, expected: type, timeout_s: float = START_TIMEOUT_S,
               on_other: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Wait for one `expected` message from every worker (failures raise)."""
        answers: list[Any] = [None] * len(self.sockets)
        poller = zmq.Poller()
        for socket in self.sockets:
            poller.register(socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout_s
        while any(a is None for a in answers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerLost(f"workers did not answer within {timeout_s:.0f} s")
            events = dict(poller.poll(min(remaining, 0.5) * 1000))
            for channel, socket in enumerate(self.sockets):
                if socket in events:
                    msg = self.receive(channel)
                    if isinstance(msg, expected) and answers[channel] is None:
                        answers[channel] = msg
                    else:
                        self.check(channel, msg, on_other)
            self.check_alive()
        return answers

    def check(self, channel: int, msg: Any, on_other: Callable[[int, Any], None] | None) -> None:
        """Raise for a failure report; hand anything else to `on_other`."""
        if isinstance(msg, Failure):
            raise error_named(msg.error, msg.message)
        if isinstance(msg, Stats):
            self.stats[channel] = msg.counters
        elif on_other is not None:
            on_other(channel, msg)

    def check_alive(self) -> None:
        for channel, process in enumerate(self.processes):
            if process.exitcode is not None and not self.stats[channel]:
                while self.sockets[channel].poll(0):  # its last words explain best
                    self.check(channel, self.receive(channel), None)
                raise PeerLost(f"{process.name} died unexpectedly (exit code {process.exitcode})")

    def stop(self) -> list[dict[str, float]]:
        """Ask every worker to stop, collect their counters, and wait for them to exit."""
        for channel, process in enumerate(self.processes):
            if process.exitcode is None:
                self.send(channel, Stop())
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for channel, socket in enumerate(self.sockets):
            while not self.stats[channel] and socket.poll(max(0, deadline - time.monotonic()) * 1000):
                msg = self.receive(channel)
                if isinstance(msg, Stats):
                    self.stats[channel] = msg.counters
        self.close()
        return self.stats

    def close(self) -> None:
        """Make sure no worker survives: join briefly, then terminate, then kill."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.exitcode is None:
                process.terminate()
                process.join(0.5)
            if process.exitcode is None:
                process.kill()
                process.join()
        for socket in self.sockets:
            socket.close(linger=0)
        self.sockets.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

