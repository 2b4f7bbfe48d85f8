"""Starting, watching, replacing and stopping a coordinator's worker processes.

Workers come from a forkserver that has already imported the worker code (numpy, zmq,
zstandard), so starting one costs milliseconds, not a fresh interpreter. Each worker gets its
own IPC socket to the coordinator in a private folder. A worker that dies, or whose channel
connection drops, is reported as ChannelLost so that the coordinator can replace it.
Stopping is always bounded, so no process outlives the coordinator.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import replace
from typing import Any, Callable, Iterable

import zmq

from engine.coordinator import forkserver
import workers.main as worker_main
from workers.codecs import make_codec, session_codecs
from workers.handlers import HANDLERS
from engine.errors import PeerLost, TransferError, error_named
from engine.wire.framing import decode, encode
from engine.wire.jobs import Connect, Failure, Stop
from workers.config import WorkerConfig
from engine.log import detail, warn
from engine.settings import MAX_CHANNEL_FAILURES

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 2.0


def handler_names() -> list[str]:
    """The payload handlers our workers can load (what a receiver accepts in a HELLO)."""
    return HANDLERS.names()


def check_codecs(compress: str, device_compress: str) -> None:
    """UsageError unless our workers can load both codec specs."""
    session_codecs(compress)
    make_codec(device_compress)


class ChannelLost(PeerLost):
    """A worker died or lost its connection: its channel may be recovered by a replacement."""

    def __init__(self, channel: int, cause: str) -> None:
        prefix = f"channel {channel}: "
        super().__init__(cause if cause.startswith(prefix) else prefix + cause)
        self.channel = channel


class Recovery:
    """Counts each channel's failures and runs its restart until one holds.

    A restart can itself be cut short by another failure (the replacement killed too); that
    counts as a failure of its own. The MAX_CHANNEL_FAILURES-th failure of one channel ends
    the transfer with a message naming the channel and the last cause.
    """

    def __init__(self, channels: int, side: str) -> None:
        self.failures = [0] * channels
        self.side = side

    def handle(self, lost: ChannelLost, restart: Callable[[int], None]) -> None:
        while True:
            channel = lost.channel
            self.failures[channel] += 1
            if self.failures[channel] >= MAX_CHANNEL_FAILURES:
                raise TransferError(f"channel {channel} failed {self.failures[channel]} times, "
                                    f"giving up; last cause: {lost}")
            warn(f"{lost}; starting a new {self.side} worker "
                 f"(failure {self.failures[channel]} of {MAX_CHANNEL_FAILURES - 1} allowed)")
            try:
                restart(channel)
                return
            except ChannelLost as again:
                lost = again


class WorkerGroup:
    """One worker per channel, each with a PAIR socket owned by the calling thread."""

    def __init__(self, zmq_context: zmq.Context, template: WorkerConfig, channels: int) -> None:
        self.zmq_context = zmq_context
        # A debug hook: the handlers inject the named fault (workers/handlers/ram.py,
        # device.py), so that tests see verification catch it through the real code.
        template = replace(template, fault=os.environ.get("MULTIFD_FAULT", ""))
        self.template = template
        self.folder = tempfile.mkdtemp(prefix="multifd-")
        self.sockets: list[zmq.Socket | None] = [None] * channels
        self.processes: list[Any] = [None] * channels
        self.starts = 0  # how many workers were started: names each IPC endpoint uniquely
        self._poller: zmq.Poller | None = None  # over `sockets`; rebuilt when one is replaced
        self._replaced: set[int] = set()  # channels whose new worker has not connected yet
        forkserver.start()
        try:
            for channel in range(channels):
                self._start(channel, template)
        except BaseException:
            self.close()
            raise

    def _start(self, channel: int, config: WorkerConfig) -> None:
        socket = self.zmq_context.socket(zmq.PAIR)
        socket.linger = 0
        endpoint = f"ipc://{self.folder}/w{channel}.{self.starts}"
        self.starts += 1
        socket.bind(endpoint)
        self.sockets[channel] = socket
        self._poller = None
        process = forkserver.WorkerProcess(target=worker_main.run_worker,
                                           args=(replace(config, channel=channel,
                                                         control=endpoint),),
                                           name=f"multifd-{config.side}-{channel}",
                                           daemon=True)
        process.start()
        self.processes[channel] = process
        detail(f"channel {channel}: {config.side} worker started (pid {process.pid})")

    def replace(self, channel: int, **changes: Any) -> None:
        """Kill channel's worker (if still alive) and start a new one with `changes`."""
        self._end(self.processes[channel])
        self.sockets[channel].close(linger=0)
        self._start(channel, replace(self.template, **changes))
        self._replaced.add(channel)

    def poller(self, *others: Any) -> zmq.Poller:
        """A poller over `others` (sockets or file descriptors, always the same ones) and the
        current worker sockets: the coordinators' main loops wait on it."""
        if self._poller is None:
            self._poller = zmq.Poller()
            for item in (*others, *self.sockets):
                self._poller.register(item, zmq.POLLIN)
        return self._poller

    def send(self, channel: int, msg: Any) -> None:
        """Never blocks: a worker that cannot take a message has died (its PAIR has no peer)."""
        if isinstance(msg, Connect):  # every source worker's connection, first or again
            again = f", replaying from packet {msg.first_seq}" \
                if channel in self._replaced else ""
            self._replaced.discard(channel)
            detail(f"channel {channel}: connecting to {msg.endpoint}{again}")
        try:
            self.sockets[channel].send(encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            raise ChannelLost(channel, f"{self.processes[channel].name} stopped taking work") \
                from None

    def broadcast(self, msg: Any) -> None:
        for channel in range(len(self.sockets)):
            self.send(channel, msg)

    def receive(self, channel: int) -> Any:
        return decode(self.sockets[channel].recv())

    def gather(self, expected: type, channels: Iterable[int] | None = None,
               timeout_s: float = START_TIMEOUT_S) -> dict[int, Any]:
        """Wait for one `expected` message from each of `channels` (default: all)."""
        waiting = set(range(len(self.sockets)) if channels is None else channels)
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                raise PeerLost(f"workers did not start within {timeout_s:.0f} s")
            poller = zmq.Poller()
            for channel in waiting:
                poller.register(self.sockets[channel], zmq.POLLIN)
            events = dict(poller.poll(100))
            for channel in list(waiting):
                if self.sockets[channel] in events:
                    msg = self.receive(channel)
                    if isinstance(msg, expected):
                        answers[channel] = msg
                        waiting.discard(channel)
                    else:
                        self.check(channel, msg, None)
            self.check_alive(waiting)
        return answers

    def handle(self, events: dict, on_message: Callable[[int, Any], None]) -> None:
        """Hand every message waiting on the sockets `events` names to `on_message`
        (failures raise instead), then check that every worker is still alive."""
        for channel, socket in enumerate(self.sockets):
            while socket in events and socket.poll(0):
                self.check(channel, self.receive(channel), on_message)
        self.check_alive()

    def check(self, channel: int, msg: Any, on_other: Callable[[int, Any], None] | None) -> None:
        """Raise for a failure report; hand anything else to `on_other`."""
        if isinstance(msg, Failure):
            if msg.error == "PeerLost":
                raise ChannelLost(channel, msg.message)
            raise error_named(msg.error, msg.message)
        if on_other is not None:
            on_other(channel, msg)

    def check_alive(self, channels: Iterable[int] | None = None) -> None:
        """Raise ChannelLost for a worker (of `channels`, default all) that has exited."""
        for channel in range(len(self.processes)) if channels is None else channels:
            process = self.processes[channel]
            if process.exitcode is not None:
                while self.sockets[channel].poll(0):  # its last words explain best
                    self.check(channel, self.receive(channel), None)
                raise ChannelLost(channel, f"{process.name} died unexpectedly "
                                           f"(exit code {process.exitcode})")

    def close(self) -> None:
        """Stop every worker (asked first, then terminated: they hold no state worth saving)
        and remove the IPC folder. Bounded by STOP_TIMEOUT_S."""
        for channel, process in enumerate(self.processes):
            if process is not None and process.exitcode is None:
                try:
                    self.send(channel, Stop())
                except ChannelLost:
                    pass  # gone already
        deadline = time.monotonic() + STOP_TIMEOUT_S / 4
        for process in self.processes:
            if process is not None:
                process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            self._end(process)
        for socket in self.sockets:
            if socket is not None:
                socket.close(linger=0)
        shutil.rmtree(self.folder, ignore_errors=True)

    @staticmethod
    def _end(process: Any) -> None:
        if process is None:
            return
        if process.exitcode is None:
            process.terminate()
            process.join(0.5)
        if process.exitcode is None:
            process.kill()
        process.join()
